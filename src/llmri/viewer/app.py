"""``create_app(stores)``: the viewer's FastAPI app (JSON + binary REST for replay, WebSocket for live sessions).

Endpoints (every one behind :class:`~llmri.viewer.security.SecurityMiddleware`), by router:

=======================================================  ==============================================
``routes/static.py``
``GET /``                                                the page (``viewer_web/index.html``)
``GET /static/{file}``                                   the client's JS/CSS (an allow-list built at start)
``routes/info.py``
``GET /api/info``                                        version, stores, features
``GET /api/colormaps``                                   colour-map LUTs (``uint8[256,3]`` each, flattened)
``routes/sessions.py``
``GET /api/stores``                                      the stores given on the command line (ids, labels)
``GET /api/stores/{store}/sessions``                     one store's sessions (summaries)
``GET /api/sessions``                                    every session of every store (summaries), newest
                                                         first; ``?q=`` text search, ``?meta.KEY=VALUE`` filters
``GET /api/sessions/{store}/{session}``                  one session: summary, full metadata, layer grid
``GET /api/sessions/{store}/{session}/tokens``           token table records (``?start=&stop=``)
``GET /api/compare?a={store}/{session}&b=...``           whether two sessions can be diffed (409 if not)
``routes/pairs.py``                                      (docs/interventions.md, "In the viewer")
``GET /api/comparison?a={store}/{session}&b=...``        ``llmri.compare(a, b)``, binary ``[2, signals, n, layers]``
``GET /api/sessions/{store}/{session}/patching``         the patching sweep it stores, JSON
``POST /api/sessions/{store}/{session}/patching/run``    one cell of it as a session (stored, or run now)
``routes/study.py``
``GET /api/stores/{store}/study``                        a study's running statistics per signal and layer
``routes/frames.py``
``GET /api/sessions/{store}/{session}/frames``           a frame range, binary (``?signal=&start=&stop=``,
                                                         ``&dtype=uint8`` for quantised; ``signal=resid,mlp``
                                                         stacks several: ``[signals, n, ...]``); see encoding.py
``GET /api/sessions/{store}/{session}/stats``            ``[2, n, layers]`` float32 norm/sparsity, binary
``routes/readouts.py``                                   (docs/readouts.md; 400 for a session without it)
``GET /api/sessions/{store}/{session}/lens``             the logit lens of a range (``?start=&stop=``), JSON
``GET /api/sessions/{store}/{session}/attention``        attention per head of a range (at most 16), JSON
``GET /api/sessions/{store}/{session}/lensstrip``        ``[2, n, layers]`` float32 ``next_prob``, top-1 final, binary
``GET /api/sessions/{store}/{session}/markers``          notable tokens with their reasons, JSON
``GET /api/sessions/{store}/{session}/probestrip``       each probe's projection and cosine ``[token, layer]``, binary
``routes/features.py``                                   (docs/sae.md "In the viewer"; 404 for an SAE it lacks)
``GET /api/sessions/{store}/{session}/features``         the SAEs it holds: records, mean L0 / FVU / cosine
``GET .../features/{sae}``                               each token's top features of a range, JSON
``GET .../features/{sae}/strip``                         ``[F, n]`` float32 activations of ``?feature=``, binary
``GET .../features/{sae}/search``                        features present, by id or label (``?q=``), JSON
``GET .../features/{sae}/direction``                     a feature's decoder direction (live ``--sae`` only)
``routes/progress.py``
``WS  /api/sessions/{store}/{session}/live``             JSON progress messages while a session records
=======================================================  ==============================================

The live chat plug-in (:mod:`llmri.viewer.live`) adds ``WS /api/live``. Unknown or malformed ids answer
404 (``{"error": ...}``), bad parameters 400. A failure inside the server answers 500 with one generic
line (the detail, which may name files, goes to the ``llmri.viewer`` log): see :mod:`.errors`.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .._errors import require
from .security import SecurityMiddleware, SecurityPolicy
from .state import LivePlugin, ViewerState, store_entries


def create_app(
    stores: Any,
    *,
    port: int | None = None,
    token: str | None = None,
    remote: bool = False,
    live: LivePlugin | None = None,
    poll_interval: float = 0.5,
) -> Any:
    """Build the viewer app over ``stores``.

    Parameters
    ----------
    stores
        A FrameStore or path, a list of them, or a ``{label: store_or_path}`` mapping. Store ids
        ``s0``, ``s1``, ... follow this order; paths are opened with :func:`llmri.open_store`.
    port
        The port the server listens on; requests whose Host names another port are refused.
        ``None`` accepts any port (``serve`` sets it once the socket is bound).
    token
        Required on every request when set (non-loopback binds): see :mod:`llmri.viewer.security`.
    remote
        The server is bound to a non-loopback address: the Host allow-list is lifted and ``token``
        must be set.
    live
        Optional plug-in (:class:`~llmri.viewer.state.LivePlugin`, e.g. the live chat): its
        ``attach(app, state)`` adds its routes; ``/api/info`` reports ``"live": true`` when given.
    poll_interval
        Seconds between checks for new frames of a session being recorded.

    Returns
    -------
    fastapi.FastAPI
        The app; ``app.state.llmri`` is the :class:`~llmri.viewer.state.ViewerState`.
    """
    fastapi = require("fastapi", "viewer")
    from .errors import install_error_handlers
    from .routes import features, frames, info, pairs, probes, progress, readouts, sessions, static, study

    if remote and not token:
        raise ValueError("a remote (non-loopback) viewer needs a token")
    policy = SecurityPolicy(port=port, token=token, remote=remote)
    state = ViewerState(store_entries(stores), policy, live, poll_interval, static=static.static_files())
    app = fastapi.FastAPI(title="llmri viewer", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llmri = state
    install_error_handlers(app)
    for module in (static, info, sessions, pairs, study, frames, readouts, probes, features, progress):
        app.include_router(module.router)
    if isinstance(state.live, LivePlugin):
        state.live.attach(app, state)
    # Response headers (nosniff, CSP, CORP, COOP, no-store...) are added here, to every response.
    app.add_middleware(SecurityMiddleware, policy=state.policy)
    return app
