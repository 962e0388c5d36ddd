"""The v2 HTTP API: one route table for the routes and their OpenAPI document, schemas, tus."""
