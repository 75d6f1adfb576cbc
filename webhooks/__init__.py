"""Webhooks (PROTOCOL.md section 7): endpoints of API clients, an outbox of events, and the
node's sending loop. Above both apps: it reads push_app's pushes and clients and
sessions_app's sessions; neither app imports it."""
