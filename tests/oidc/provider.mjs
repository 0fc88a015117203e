// A real OpenID provider for the tests: panva's oidc-provider (v9) issuing JWT access tokens by the
// client_credentials grant, with RFC 8707 resource indicators. Run with Node >= 22:
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG.json: {"port": 0 (a free one), "issuer_host": "127.0.0.1", "jwks": {"keys": [private JWKs with kid]},
//   "clients": [{"client_id", "client_secret", "scope", ...other oidc-provider client metadata}],
//   "resources": {"<resource URL>": {"scope": "a b", "audience"?: "...", "alg"?: the first key's, else RS256}}, "ttl_s": 300,
//   "node_modules"?: the folder holding oidc-provider (default: the repository's .tools/node_modules)}
// It listens on 127.0.0.1 and prints one line on stdout when ready: {"issuer": "http://HOST:PORT", "port": PORT}
// (everything else goes to stderr). GET /test/jwks-requests answers {"count": N}, the requests made to the JWKS.
// It exits when its stdin closes or on SIGTERM.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const nodeModules = config.node_modules ?? fileURLToPath(new URL('../../.tools/node_modules', import.meta.url));
// oidc-provider prints its notices with console.info: keep stdout for the ready line.
console.info = console.log = console.error;
const oidcProvider = createRequire(join(nodeModules, 'noop.js')).resolve('oidc-provider');
const { default: Provider, errors } = await import(pathToFileURL(oidcProvider));

const resources = config.resources ?? {};
const ttl = config.ttl_s ?? 300;
// The first key's alg signs by default (id tokens too, which must match a key oidc-provider holds).
const defaultAlg = config.jwks.keys[0]?.alg ?? 'RS256';

let jwksRequests = 0;
let handle;
const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (path === '/test/jwks-requests') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ count: jwksRequests }));
    return;
  }
  if (path === '/jwks') jwksRequests += 1;
  handle(req, res);
});
await new Promise((resolve) => server.listen(config.port ?? 0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://${config.issuer_host ?? '127.0.0.1'}:${port}`;

const provider = new Provider(issuer, {
  jwks: config.jwks,
  clients: (config.clients ?? []).map((client) => ({
    grant_types: ['client_credentials'], response_types: [], redirect_uris: [], ...client,
  })),
  // The scopes a client's `scope` allows (must be listed here); a resource's `scope` then filters the grant.
  scopes: [...new Set([...Object.values(resources), ...(config.clients ?? [])]
    .flatMap(({ scope }) => (scope ?? '').split(' ').filter(Boolean)))],
  clientDefaults: { id_token_signed_response_alg: defaultAlg },
  cookies: { keys: ['test-only-cookie-key'] },
  ttl: { ClientCredentials: ttl },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo(ctx, resourceIndicator) {
        const resource = resources[resourceIndicator];
        if (!resource) throw new errors.InvalidTarget();
        return {
          scope: resource.scope,
          audience: resource.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: ttl,
          jwt: { sign: { alg: resource.alg ?? defaultAlg } },
        };
      },
    },
  },
});
provider.on('server_error', (ctx, error) => console.error('oidc-provider server_error:', error));
handle = provider.callback();

process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
