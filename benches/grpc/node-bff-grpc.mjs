// Peer for benches/grpc_ab.py: the Node BFF of the shared benchmark (Fastify + undici,
// Promise.all fan-out), with the user from the gRPC service through @grpc/grpc-js and
// @grpc/proto-loader, the usual Node stack for it. Same answer as manifold's route.
import Fastify from 'fastify';
import { Pool } from 'undici';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const PORT = Number(process.env.PORT || 7102);
const UP = process.env.UPSTREAM || 'http://127.0.0.1:7001';
const GRPC = process.env.GRPC_UPSTREAM || '127.0.0.1:7005';
const here = path.dirname(fileURLToPath(import.meta.url));

const def = protoLoader.loadSync(path.join(here, 'users.proto'), {
  keepCase: false, longs: String, enums: String, defaults: true, oneofs: true,
});
const Users = grpc.loadPackageDefinition(def).bench.users.v1.Users;
const users = new Users(GRPC, grpc.credentials.createInsecure());
const getUser = (id, deadline) => new Promise((resolve, reject) =>
  users.GetUser({ id }, { deadline }, (err, u) => (err ? reject(err) : resolve(u))));

const pool = new Pool(UP, { connections: 128, pipelining: 1, keepAliveTimeout: 60_000 });
const getJson = async (p, signal) => {
  const { statusCode, body } = await pool.request({ method: 'GET', path: p, signal });
  if (statusCode >= 400) { await body.dump(); throw new Error(`upstream ${statusCode}`); }
  return body.json();
};
const app = Fastify({ logger: false });

app.get('/api/dashboard/:id', async (req, reply) => {
  const signal = AbortSignal.timeout(1000);
  const deadline = Date.now() + 1000;
  const id = req.params.id;
  const eid = encodeURIComponent(id);
  const [user, orders, recs] = await Promise.all([
    getUser(id, deadline),
    getJson(`/orders?customer=${eid}`, signal),
    getJson(`/recommendations/${eid}`, signal).catch(() => []),
  ]);
  const u = { id: user.id, name: user.name, avatar_url: user.avatar, customer_id: user.customerId };
  reply.header('x-manifold-completed', 'true');
  return { user: u, orders: orders.items, recommendations: recs };
});

app.listen({ port: PORT, host: '127.0.0.1' });
