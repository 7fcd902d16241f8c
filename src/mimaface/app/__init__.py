"""``mimaface app``: a local web app (Gradio) over ``mimaface animate``: a portrait driven by a video,
an image, a MOTION.json edited with sliders or speech, by either engine, with one-frame previews
through the mesh warp, a progress bar and Cancel; each job gives its result, the side-by-side and
the motion it animated. It serves this machine only unless told otherwise, never shares a
public link and sends no analytics."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import gradio as gr

from mimaface.app.handlers import Handlers
from mimaface.app.layout import build_app
from mimaface.pipelines.engines import Engine, choose_engine

# Gradio reads this whenever it would send usage data or look for a newer version: never.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

LOCALHOST = "127.0.0.1"


def create_app(engine: str | None = None, checkpoint: str | os.PathLike | None = None,
               output_dir: str | os.PathLike | None = None) -> gr.Blocks:
    """The app with its default engine loaded (``engine``/``checkpoint`` as ``mimaface animate`` takes them;
    the page offers the other one too, loaded on its first job: the diffusion engine from ``checkpoint``,
    else the bundled tiny model); results are written under ``output_dir`` (default: a temporary folder,
    removed when the process ends)."""
    name = choose_engine(engine, checkpoint)
    if output_dir is None:
        output_dir = tempfile.mkdtemp(prefix="mimaface-app-")
        atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
    app = build_app(Handlers(Engine.load(name, checkpoint), output_dir, checkpoint))
    return app.queue(default_concurrency_limit=1)


def serve(app: gr.Blocks, *, host: str = LOCALHOST, port: int | None = None, block: bool = True) -> str:
    """Start the server (no public share link); its local URL. ``port`` None: 7860 or the next free one.
    ``block``: serve until interrupted (then close)."""
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True,
                           quiet=True, footer_links=["gradio", "settings"])
    if block:
        print(f"mimaface app: open {url} in a browser (Ctrl+C stops)", flush=True)
        try:
            app.block_thread()
        finally:
            app.close()
    return url


__all__ = ["LOCALHOST", "create_app", "serve"]
