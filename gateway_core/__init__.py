"""The shared base beneath both apps: settings access, environment parsing, logging,
metrics, HTTP middleware, the message types and their encoding, the broker backends,
client tokens, and the bridge from sync code to this process's relay.

Imports nothing of ``sessions_app``, ``push_app``, ``monitoring``, ``console``,
``gateway_node`` or ``gatewaysite`` (tests/test_architecture.py holds it to that).
"""
