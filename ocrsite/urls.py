from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from ocr.api.operations import metrics_prometheus

handler400 = "ocr.exceptions.bad_request"  # JSON on the API
handler500 = "ocr.exceptions.server_error"  # JSON on the API; 503 when the database is unavailable

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("v1/ocr/", include("ocr.api.urls")),
    path("metrics", metrics_prometheus, name="metrics-prometheus"),
    path("", include("ocr.ui_urls")),
]
