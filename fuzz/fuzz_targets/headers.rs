//! Header forwarding: whatever a client sends, only what the route lists reaches an
//! upstream, never a hop-by-hop header or one the client's `connection` names. And the
//! cache-key part made of those headers is byte-exact: a value changed in any byte
//! (UTF-8 or not) changes the key.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use manifold::base::forward::{
    Forward, Peer, connection_named, is_gateway_owned, is_hop_by_hop, upstream_headers,
};

fuzz_target!(|data: &[u8]| {
    // Lines of `name: value`; the first line lists the route's forward_headers.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let listed: Vec<HeaderName> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !is_gateway_owned(n))
        .collect();
    let mut client = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) {
            client.append(n, v);
        }
    }
    let named: Vec<HeaderName> = connection_named(&client).collect();
    for forward in [Forward::All, Forward::Only(listed.clone())] {
        let key = manifold::state::cache::vary(&client, &forward);
        for (name, value) in client.iter() {
            let mut bytes = value.as_bytes().to_vec();
            let Some(last) = bytes.last_mut() else { continue };
            *last ^= 0x80;
            let Ok(changed) = HeaderValue::from_bytes(&bytes) else { continue };
            let mut other = client.clone();
            other.insert(name.clone(), changed);
            let forwarded = match &forward {
                Forward::All => manifold::base::forward::is_forwarded_by_star(name),
                Forward::Only(list) => list.contains(name),
            };
            if forwarded && client.get_all(name).iter().count() == 1 {
                assert_ne!(key, manifold::state::cache::vary(&other, &forward), "{name}");
            }
        }
    }
    let peer = Peer::new("192.0.2.1:1000".parse().unwrap());
    let id = HeaderValue::from_static("id");
    for forward in [Forward::All, Forward::Only(listed.clone())] {
        let out = upstream_headers(&client, &forward, &id, &peer);
        for name in out.keys() {
            if is_gateway_owned(name) && !is_hop_by_hop(name) {
                continue;
            }
            assert!(!is_hop_by_hop(name), "{name}");
            assert!(!named.contains(name), "{name}");
            assert!(client.contains_key(name), "{name} came from nowhere");
            let always = [
                header::ACCEPT,
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
                HeaderName::from_static("idempotency-key"),
            ];
            if let Forward::Only(list) = &forward {
                assert!(always.contains(name) || list.contains(name), "{name}");
            }
        }
    }
});
