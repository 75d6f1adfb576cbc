"""The runtime app: the node (composition root), its servers and worker processes, the ops
endpoints, the ASGI builder and the ``rungateway``/``runconsumer`` commands.

The only package that knows every part: it imports the apps and ``gateway_core``; nothing
but ``gatewaysite`` (configuration) imports it.
"""
