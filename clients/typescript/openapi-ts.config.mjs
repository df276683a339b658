// Generates src/generated from the server's contract, docs/openapi.json (which the server
// itself generates). OPENAPI_TS_OUTPUT redirects the output: scripts/check-generated.mjs
// regenerates into a temp dir and compares.
import { defineConfig } from '@hey-api/openapi-ts';

export default defineConfig({
  input: '../../docs/openapi.json',
  output: {
    path: process.env.OPENAPI_TS_OUTPUT ?? 'src/generated',
    importFileExtension: '.js',
  },
  plugins: ['@hey-api/client-fetch', '@hey-api/typescript', '@hey-api/sdk'],
});
