"""The verification service: Veraison's challenge-response API, EAR results, shared sessions.

Needs the ``service`` extra (FastAPI, uvicorn, redis, PyJWT, prometheus-client). Modules: ``app``
(the ASGI app), ``api_shapes`` (media types, limits, documented models), ``fastpath`` (the two hot
endpoints served straight from ASGI), ``sessions`` and ``redis_store`` (session stores),
``appraisal`` (one document against one policy), ``ear`` (claims and signing), ``policies`` (the
policies file), ``runner`` (uvicorn and workers). The client side (ask for an appraisal, check
the EAR) is ``nitro_attest.relying_party``.
"""
