from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("webhooks", views.WebhookListView.as_view(), name="webhooks"),
    path("webhooks/<str:endpoint_id>", views.WebhookDetailView.as_view(),
         name="webhook-detail"),
]
