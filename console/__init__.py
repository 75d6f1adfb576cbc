"""The operator console: the admin site with its dashboard, and the ModelAdmins of both
apps (``console/admin.py`` registers them), and the retention command ``prunegateway``.

A top-level reader and writer of both apps; it imports neither ``gateway_node`` nor
``gatewaysite``, and hands messages to the relay only through ``gateway_core.bridge``.
"""
