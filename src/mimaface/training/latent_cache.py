"""VAE latents of every stored frame and I_R render, computed once per (data set, VAE, size).

On a CPU the frozen VAE's encoder costs about as much as a tiny UNet's training step, so
stages 1 and 2 read these instead (``data.cache_latents: true``). Layout::

    CACHE/info.json                      {"vae": sha256 of the VAE weights, "size": ..., "data": ROOT}
    CACHE/SPLIT/IDENTITY/CLIP/latents.npy         (T, C, h, w) float16, scaled by the VAE's scaling_factor
    CACHE/SPLIT/IDENTITY/CLIP/render_latents.npy  (T, C, h, w) float16

The posterior mean is stored (the tiny VAE's posterior is narrow). Clips are written under a
temporary name and renamed, so an interrupted build resumes where it stopped; one process at a
time builds a cache (another gets "CACHE is in use by process N").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimaface import files
from mimaface.data.clipstore import ClipRef
from mimaface.errors import InputError


def vae_fingerprint(vae: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_images(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> scaled latent means (N, C, h, w)."""
    latents = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
    return latents * vae.config.scaling_factor


class LatentCache:
    """Read access to a built cache (memory-mapped, per clip)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._arrays: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def clip(self, ref: ClipRef) -> tuple[np.ndarray, np.ndarray]:
        """(latents, render_latents) of a clip, each (T, C, h, w) float16."""
        folder = self.directory / ref.split / ref.identity / ref.clip
        if folder not in self._arrays:
            if not folder.is_dir():
                raise InputError(f"latent cache '{self.directory}' has no clip {ref.split}/{ref.identity}/{ref.clip}; "
                                 f"delete the cache folder to rebuild it")
            self._arrays[folder] = (np.load(folder / "latents.npy", mmap_mode="r"),
                                    np.load(folder / "render_latents.npy", mmap_mode="r"))
        return self._arrays[folder]

    def gather(self, refs: list[ClipRef], frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of ``frames[i]`` (a frame index, or (F,) indices) of clip ``refs[i]``: float32 tensors."""
        latents, renders = [], []
        for ref, index in zip(refs, frames.tolist()):
            lat, ren = self.clip(ref)
            latents.append(np.array(lat[index]))
            renders.append(np.array(ren[index]))
        return (torch.from_numpy(np.stack(latents)).float(), torch.from_numpy(np.stack(renders)).float())


def build_latent_cache(vae: torch.nn.Module, dataset, directory: str | os.PathLike, *, batch_size: int = 32,
                       progress: bool = True) -> LatentCache:
    """Encode every frame and render of ``dataset`` (a clip-store dataset) into ``directory``."""
    directory = Path(directory)
    fingerprint = vae_fingerprint(vae)
    info = {"vae": fingerprint, "size": dataset.size, "data": str(dataset.root)}
    info_path = directory / "info.json"
    with files.folder_lock(directory):  # one builder; readers only ever see whole clips
        if info_path.is_file():
            try:
                old = json.loads(info_path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise InputError(f"{info_path}: unreadable ({exc}); delete the cache folder to rebuild it") from None
            if old != info:
                raise InputError(f"latent cache '{directory}' was built for {old}, not {info}: delete it or set "
                                 f"data.latent_cache to another folder")
        else:
            files.write_json(info_path, info)
        todo = [(i, ref) for i, ref in enumerate(dataset.clips)
                if not (directory / ref.split / ref.identity / ref.clip).is_dir()]
        bar = tqdm(todo, desc=f"caching latents ({dataset.split})", unit="clip", disable=not progress or not todo)
        for clip_index, ref in bar:
            frames, renders = dataset._clip_arrays(clip_index)
            stored = int(dataset.stored_sizes[clip_index])
            outputs = []
            for array, convert in ((frames, dataset._images), (renders, dataset._renders)):
                chunks = [encode_images(vae, _rgb(convert(array[s:s + batch_size], stored)))
                          for s in range(0, len(array), batch_size)]
                outputs.append(torch.cat(chunks).cpu().numpy().astype(np.float16))
            final = directory / ref.split / ref.identity / ref.clip
            partial = final.with_name(f".{ref.clip}.part")
            partial.mkdir(parents=True, exist_ok=True)
            np.save(partial / "latents.npy", outputs[0])
            np.save(partial / "render_latents.npy", outputs[1])
            files.replace_folder(partial, final)
    return LatentCache(directory)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """Grey renders (N, 1, H, W) -> (N, 3, H, W) for the RGB VAE."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
