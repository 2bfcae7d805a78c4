#!/usr/bin/env bash
# Installs the system packages the service needs (tesseract-ocr, redis-server) with apt-get
# when they are missing and we may; otherwise says exactly what to install and fails.
set -euo pipefail
need=()
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
# Language packs for request.lang (and "auto"), and the osd data for rotate/lang "auto" (API.md section 9)
tessdata=$(ls -d /usr/share/tesseract-ocr/*/tessdata 2>/dev/null | head -1 || true)
for lang in eng deu fra spa ita por nld osd; do
  [ -n "$tessdata" ] && [ -f "$tessdata/$lang.traineddata" ] || need+=("tesseract-ocr-$lang")
done
command -v redis-server >/dev/null 2>&1 || command -v redis-cli >/dev/null 2>&1 || need+=(redis-server)
if [ "${WITH_BROWSER:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then need+=(chromium); fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing ${need[*]} with apt-get ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  exit 0
fi
echo "Missing system packages: ${need[*]}" >&2
echo "Install them, then run make again:  sudo apt-get install ${need[*]}" >&2
exit 1
