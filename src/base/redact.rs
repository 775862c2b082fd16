//! Credentials in URLs (`https://user:password@host`) never leave the process: not in
//! `/routes`, logs, errors or `check`'s diagnostics. Everything that shows a URL shows
//! it through here.

use std::borrow::Cow;

/// What replaces a URL's userinfo.
const MASK: &str = "***";

/// `url` with its userinfo (`user:password@`), if any, replaced by `***@`. Works on
/// any text shaped like a URL, valid or not (diagnostics show the invalid ones).
pub fn url(url: &str) -> Cow<'_, str> {
    match userinfo(url, 0) {
        Some((start, end)) => Cow::Owned(format!("{}{MASK}{}", &url[..start], &url[end..])),
        None => Cow::Borrowed(url),
    }
}

/// `text` with the userinfo of every URL in it blotted out byte for byte, so that byte
/// offsets into it (a diagnostic's spans) still point where they did.
pub fn in_text(text: &str) -> Cow<'_, str> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some((start, end)) = userinfo(text, from) {
        found.push((start, end));
        from = end;
    }
    found.extend(inline_secrets(text));
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut bytes = text.as_bytes().to_vec();
    for (start, end) in found {
        bytes[start..end].fill(b'*');
    }
    // Only whole characters were replaced, by ASCII: still UTF-8.
    Cow::Owned(String::from_utf8(bytes).unwrap_or_default())
}

/// The byte ranges of `secret = "..."` values written inline (a `${ENV}` reference
/// is not a secret and stays readable), so a diagnostic near one never prints it.
fn inline_secrets(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text.get(from..).and_then(|t| t.find("secret")) {
        let at = from + i;
        from = at + "secret".len();
        let before_ok = at == 0 || matches!(bytes[at - 1], b' ' | b'\t' | b'\n' | b'{' | b',');
        let rest = &text[from..];
        let trimmed = rest.trim_start_matches([' ', '\t']);
        let Some(after_eq) = trimmed.strip_prefix('=') else {
            continue;
        };
        let value = after_eq.trim_start_matches([' ', '\t']);
        let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        let start = text.len() - value.len() + 1;
        let Some(len) = text[start..].find([quote, '\n']) else {
            continue;
        };
        if before_ok && !text[start..].starts_with("${") {
            out.push((start, start + len));
        }
    }
    out
}

/// The byte range of the first userinfo at or after `from`: what lies between a
/// `scheme://` and the last `@` of the authority.
fn userinfo(text: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = text.get(at..)?.find("://") {
        let start = at + i + 3;
        let rest = &text[start..];
        // The authority ends at the path, query or fragment, or where the URL does.
        let end = rest
            .find(|c: char| {
                matches!(c, '/' | '?' | '#') || c.is_whitespace() || "\"'`,]".contains(c)
            })
            .unwrap_or(rest.len());
        if let Some(atsign) = rest[..end].rfind('@') {
            return Some((start, start + atsign));
        }
        at = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_are_masked_and_env_references_kept() {
        let text = "[auth.jwt.a]\nsecret = \"hunter2hunter2\"\n[auth.jwt.b]\nsecret=\"${JWT_SECRET}\"\nx = { secret = 'abc' }\nmy_secret = \"kept\"\n";
        let masked = in_text(text);
        assert_eq!(masked.len(), text.len(), "same length: spans stay right");
        assert!(
            !masked.contains("hunter2") && !masked.contains("'abc'"),
            "{masked}"
        );
        assert!(
            masked.contains("${JWT_SECRET}") && masked.contains("\"kept\""),
            "{masked}"
        );
    }

    #[test]
    fn userinfo_is_masked_in_urls_and_text() {
        assert_eq!(url("https://u:p@h:1/x?y"), "https://***@h:1/x?y");
        assert_eq!(url("http://token@h"), "http://***@h");
        assert_eq!(
            url("http://h/a@b"),
            "http://h/a@b",
            "an @ in the path is not userinfo"
        );
        assert_eq!(url("not a url"), "not a url");
        let text = "urls = [\"http://a:secret@h1\", \"https://h2\", \"http://b:pw@h3/p\"]";
        let masked = in_text(text);
        assert_eq!(masked.len(), text.len());
        assert!(!masked.contains("secret") && !masked.contains("pw@"));
        assert!(masked.contains("http://********@h1") && masked.contains("http://****@h3/p"));
        assert!(masked.contains("https://h2"));
    }
}
