"""The ASGI entry point: daphne runs without Twisted's own multipart parsing."""


def test_daphne_does_not_parse_multipart_bodies_itself():
    from daphne import http_protocol

    import ocrsite.asgi  # noqa: F401  (applies the patch)

    # Twisted's own multipart parse blocked every stream for ~250 ms per 9.5 MB upload
    assert getattr(http_protocol.WebRequest.__init__, "_ocrsite_patched", False)
