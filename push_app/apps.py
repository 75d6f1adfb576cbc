from django.apps import AppConfig


class PushAppConfig(AppConfig):
    name = "push_app"
    verbose_name = "Pushes"
    default_auto_field = "django.db.models.BigAutoField"
