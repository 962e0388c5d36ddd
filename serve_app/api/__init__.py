"""The v2 HTTP API: the Starlette app and its routes, request and response schemas, the
OpenAPI document, and the tus upload routes."""
