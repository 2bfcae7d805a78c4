from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/ocr/", include("ocr.urls")),
    path("", include("ocr.ui_urls")),
]
