from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway_node import ops

urlpatterns = [
    path("admin/", admin.site.urls),
    # Before push_app's, whose last pattern answers every other /api/v1/ path with a 404.
    path("api/v1/", include("webhooks.api.urls")),
    path("api/v1/", include("push_app.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("favicon.ico", ops.favicon, name="favicon"),
    path("demo/", TemplateView.as_view(template_name="demo.html"), name="demo"),
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
]
