from django.apps import AppConfig


class GatewayNodeConfig(AppConfig):
    name = "gateway_node"
    verbose_name = "Gateway node"
