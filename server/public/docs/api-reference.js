// Starts Swagger UI (vendored from the swagger-ui-dist package, served by the hub) on the hub's own
// OpenAPI document. A file of its own so the page's Content-Security-Policy needs no inline script.
/* global SwaggerUIBundle */
window.addEventListener('DOMContentLoaded', () => {
  SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#api-reference',
    deepLinking: true,
    // The reference must work where only the hub is reachable: no validator badge calling out.
    validatorUrl: null,
    tryItOutEnabled: false,
  });
});
