from django.urls import path, re_path

from push_app.api import views

urlpatterns = [
    path("push", views.PushView.as_view(), name="push"),
    path("push/batch", views.PushBatchView.as_view(), name="push-batch"),
    path("push/<str:push_id>", views.PushDetailView.as_view(), name="push-detail"),
    path("push/<str:push_id>/recipients", views.PushRecipientsView.as_view(),
         name="push-recipients"),
    path("users/<str:user_id>/presence", views.PresenceView.as_view(), name="presence"),
    path("users/<str:user_id>/disconnect", views.DisconnectView.as_view(), name="disconnect"),
    path("tokens", views.TokenView.as_view(), name="tokens"),
    # Anything else under /api/v1/ answers in JSON too, not with Django's HTML page.
    re_path(r"^.*$", views.not_found),
]
