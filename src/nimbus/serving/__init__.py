"""Online inference: the OIP v2 server (:mod:`.app`), the dynamic batcher (:mod:`.batcher`),
inference backends (:mod:`.backends`) and the deployment fleet (:mod:`.fleet`).

The package face is empty on purpose: the control plane imports :mod:`.fleet` and must not
load the ASGI server, prometheus or PIL with it. Import what you need from the submodules.
"""
