#!/bin/bash
# Fetch the two photos the warp engine's limits figure adds (a goatee and moustache, glasses) from
# Debian's opencv-doc (OpenCV's tutorials; Apache-2.0 / BSD-3-Clause, no separate image credit).
# Usage: scripts/fetch_limit_photos.sh DIR   (then: python scripts/warp_quality.py --limit-photos DIR)
set -euo pipefail
out=${1:?usage: $0 DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
(cd "$tmp" && apt-get download opencv-doc >/dev/null)
html=./usr/share/doc/opencv-doc/opencv4/html
dpkg-deb --fsys-tarfile "$tmp"/opencv-doc_*.deb | tar x -C "$tmp" "$html/230501201_1.jpg" "$html/example.jpg"
cp "$tmp/$html/230501201_1.jpg" "$out/opencv_face_swap.jpg"  # OpenCV's face-swapping tutorial
cp "$tmp/$html/example.jpg" "$out/opencv_gapi_beautification.jpg"  # G-API face beautification: left panel is the input
ls -l "$out"
