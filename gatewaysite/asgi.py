"""ASGI entry point (``daphne gatewaysite.asgi:application``): the node app builds it."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaysite.settings")

from gateway_node.asgi import build_application

application = build_application()
