#!/usr/bin/env bash
# Set up a fresh machine for Vigil: system packages (Debian), a virtualenv in .venv, the package itself.
# Usage: scripts/bootstrap.sh [serve|full]   serve = demo/serving deps; full = + TensorFlow, tests, tools.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-full}

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # tests: certificates for the rediss:// broker
if [ "$profile" = full ]; then  # tests: the example results subscribers (examples/subscribers)
  command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
  command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
fi
# The simulated RTSP camera (vigil_bench/simcam.py) runs GStreamer's RTSP server with the system python.
gst_rtsp_ok() {
  /usr/bin/python3 - 2>/dev/null <<'PY'
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
assert Gst.ElementFactory.find("appsrc") and Gst.ElementFactory.find("rtpjpegpay")
PY
}
gst_rtsp_ok || need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base
                          gstreamer1.0-plugins-good)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "bootstrap: installing Debian packages: ${need_apt[*]}" >&2
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (Debian/Ubuntu package names) and re-run." >&2
    exit 1
  fi
fi

py=${PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
extras=""
[ "$profile" = "full" ] && extras="[train,dev]"
hash=$(sha256sum pyproject.toml | cut -c1-12)
stamp=".venv/.vigil-$profile-$hash"
if [ ! -f "$stamp" ] && [ ! -f ".venv/.vigil-full-$hash" ]; then
  echo "bootstrap: installing vigil$extras into .venv (first run downloads TensorFlow: a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras"
  touch "$stamp"
fi
