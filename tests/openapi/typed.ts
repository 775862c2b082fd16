// What a frontend gets from `manifold openapi routes.toml | openapi-typescript`: the
// demo's merged answers typed by their backends' `schema`s, and its request bodies and
// parameters by the routes' `validate` schemas. `.ci/run` generates `routes.ts` and
// compiles this file with `tsc --strict`: an `unknown` where a type belongs fails it.
import type { paths } from "./routes";

type Dashboard =
  paths["/api/dashboard/{user_id}"]["get"]["responses"][200]["content"]["application/json"];
declare const dashboard: Dashboard;
const avatar: string | undefined = dashboard.user.avatar_url;
const name: string = dashboard.user.name;
const qty: number = dashboard.orders[0].qty;
const status: "processing" | "shipped" | "delivered" = dashboard.orders[0].status;
const score: number = dashboard.recommendations[0].score;
// @ts-expect-error: `deny = ["customer"]` took it out of the answer
dashboard.orders[0].customer;
// @ts-expect-error: renamed to avatar_url
dashboard.user.avatar;

type Home = paths["/api/home/{user_id}"]["get"]["responses"][200]["content"]["application/json"];
declare const home: Home;
const plan: "free" | "pro" | undefined = home.plan;

type DashboardParams = paths["/api/dashboard/{user_id}"]["get"]["parameters"];
const params: DashboardParams = { path: { user_id: 42 }, query: { lang: "de" } };
// @ts-expect-error: lang is one of en, de, fr
const badLang: DashboardParams = { path: { user_id: 42 }, query: { lang: "xx" } };

type NewOrder =
  paths["/api/orders"]["post"]["requestBody"]["content"]["application/json"];
const order: NewOrder = { items: [{ sku: "SKU-1001", qty: 2 }], gift: true };
// @ts-expect-error: qty is a number
const badOrder: NewOrder = { items: [{ sku: "SKU-1001", qty: "2" }] };
// @ts-expect-error: the form posts no other field
const extra: NewOrder = { items: [], coupon: "X" };

// The gRPC backend's part, typed from protos/profiles.proto's Profile message.
type Profile =
  paths["/api/profile/{user_id}"]["get"]["responses"][200]["content"]["application/json"];
declare const profile: Profile;
const tier: "TIER_UNSPECIFIED" | "FREE" | "PRO" = profile.profile.tier;
const followers: number = profile.profile.followers;
const badges: string[] = profile.profile.badges;
const since: string | undefined = profile.profile.memberSince;
// @ts-expect-error: `deny = ["userId"]` took it out of the answer
profile.profile.userId;

export {
  avatar, name, qty, status, score, plan, params, badLang, order, badOrder, extra,
  tier, followers, badges, since,
};
