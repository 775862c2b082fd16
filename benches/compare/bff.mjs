// A BFF written by hand in Node the way its guides suggest: Fastify, an undici pool to
// the upstream, Promise.all for the fan-out, node:cluster for one process per core.
// benches/compare.py runs it beside manifold, doing the work of routes.toml's routes.
//
//   npm install && WORKERS=2 PORT=7102 UPSTREAM=http://127.0.0.1:7001 node bff.mjs
import cluster from 'node:cluster';
import Fastify from 'fastify';
import { Pool } from 'undici';

const workers = Number(process.env.WORKERS || 1);
const port = Number(process.env.PORT || 7102);
const upstream = process.env.UPSTREAM || 'http://127.0.0.1:7001';

if (cluster.isPrimary && workers > 1) {
  for (let i = 0; i < workers; i += 1) cluster.fork();
} else {
  const pool = new Pool(upstream, { connections: 128, keepAliveTimeout: 60_000 });

  async function fetchJson(path, signal) {
    const { statusCode, body } = await pool.request({ method: 'GET', path, signal });
    if (statusCode >= 400) {
      await body.dump();
      throw new Error(`${path} answered ${statusCode}`);
    }
    return body.json();
  }

  const app = Fastify({ logger: false });

  app.get('/api/dashboard/:id', async (req, reply) => {
    const id = encodeURIComponent(req.params.id);
    const signal = AbortSignal.timeout(1000);
    const [user, orders, recommendations] = await Promise.all([
      fetchJson(`/users/${id}`, signal),
      fetchJson(`/orders?customer=${id}`, signal),
      fetchJson(`/recommendations/${id}`, signal).catch(() => []), // optional
    ]);
    const shaped = {};
    for (const key of ['id', 'name', 'customer_id']) if (key in user) shaped[key] = user[key];
    if ('avatar' in user) shaped.avatar_url = user.avatar;
    reply.header('x-manifold-completed', 'true');
    return { user: shaped, orders: orders.items, recommendations };
  });

  app.get('/api/users/:id', async (req, reply) => {
    const path = `/users/${encodeURIComponent(req.params.id)}`;
    const { statusCode, headers, body } = await pool.request({ method: 'GET', path });
    reply.code(statusCode).header('content-type', headers['content-type']);
    return reply.send(body);
  });

  app.listen({ port, host: '127.0.0.1' });
}
