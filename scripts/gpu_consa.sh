# Sourced by the GPU scripts that run the consa command: $CONSA names one, or build-gpu/consa is
# built against the local PyTorch (scripts/build_gpu.sh).
if [ -z "${CONSA:-}" ]; then
  bash scripts/build_gpu.sh
  CONSA=build-gpu/consa
fi
