"""`qvit demo`: a local web page that races the study's five variants on the same images, live.

    qvit demo [--model FILE] [--port 8000] [--device cuda|cpu]

The server (Python's standard library only) quantizes one float model into the five variants,
keeps a background loop streaming CIFAR-10 test images through all of them (latency samples,
img/s), and answers the page: pick a sample or upload any image, see each variant's top-5, its
batch-1 latency (mean/p95 over the recent runs), throughput, weight bytes, GPU memory and the
backends it ran on. On a CPU the variants run with the reference backends and the page says so.
"""
from __future__ import annotations

import copy
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from qvit.vit.deploy import Predictor, load_any
from qvit.vit.quantize import QuantConfig, quantize, weight_bytes

from qvit.variants import KEEP, MAIN
from qvit.variants import VARIANTS as _ALL

VARIANTS = {k: _ALL[k] for k in MAIN}


def default_model() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for p in ("runs/cifar10/model.safetensors", os.path.join(here, "results/h200-train-3/train/model-bf16.safetensors")):
        if os.path.isfile(p):
            return p
    raise FileNotFoundError("no model given and no trained model found (runs/cifar10/model.safetensors); "
                            "train one with `qvit train` or pass --model")


# GPU cycles (~50 us at H100/H200 clocks) the demo spins the GPU before timing a replay: longer than the host's
# submission of a ViT-L graph, so the timed region holds the replay alone (Demo._run)
_LAUNCH_COVER_CYCLES = 100_000


class Demo:
    def __init__(self, model_path: str, device: str | None = None, stream_images: int = 200):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        base = load_any(model_path, "cpu").float().eval()
        if hasattr(base, "quant_layers"):
            raise ValueError(f"{model_path}: the demo quantizes a float model itself; give the float file")
        self.model_path = model_path
        self.lock = threading.Lock()
        self.variants = {}
        cuda = self.device.type == "cuda"
        calib, why = None, None
        if any(p and QuantConfig.preset(p).needs_calibration for p, *_ in VARIANTS.values()):
            calib, why = self._calibration_images(base)
        self.skipped = {}
        for name, (preset, attn, int8_qk, keep_format) in VARIANTS.items():
            cfg = QuantConfig.preset(preset, keep=KEEP, keep_format=keep_format, int8_attention=int8_qk) if preset else None
            if cfg is not None and cfg.needs_calibration and calib is None:
                self.skipped[name] = why
                print(f"qvit demo: {name} left out: {why}", file=sys.stderr)
                continue
            m = copy.deepcopy(base)
            if cfg is not None:
                quantize(m, cfg, calib=calib if cfg.needs_calibration else None)
            before = torch.cuda.memory_allocated() if cuda else 0
            linear, a = ("triton", attn) if cuda else ("torch", "torch")
            pred = Predictor(m, self.device, linear=linear, attn=a)
            mem = (torch.cuda.memory_allocated() - before) if cuda else None
            graph, why = self._capture(pred) if cuda else (None, "no GPU")
            self.variants[name] = {"pred": pred, "preset": preset or str(pred.dtype).replace("torch.", ""),
                                   "backend": f"linear={linear}, attention={a}"
                                              + ((", CUDA graph" if graph else f", eager ({why})") if cuda else ""),
                                   "graph": graph, "weight_bytes": weight_bytes(pred.model),
                                   "gpu_bytes": mem, "lat": deque(maxlen=200), "req": deque(maxlen=200), "n": 0,
                                   "busy_s": 0.0}
        self.classes = next(iter(self.variants.values()))["pred"].classes
        self.samples = self._samples(stream_images)
        self.stream = {"index": None, "top1": {}}
        self._stop = threading.Event()

    @staticmethod
    def _calibration_images(base, n: int = 256):
        """(images, None) for the presets with static activation scales: the first n CIFAR-10 training images,
        normalized as the model's inputs (what `qvit study` calibrates on), or (None, why) where there are none."""
        if base.cfg.img_size != 32 or base.cfg.in_chans != 3:
            return None, (f"its static fp8 scales calibrate on CIFAR-10 training images (32 px), the model takes "
                          f"{base.cfg.img_size} px")
        from qvit.vit.deploy import calibration_images
        try:
            return calibration_images(base, "cifar10", n), None
        except Exception as e:  # noqa: BLE001  (the other variants still run)
            return None, f"no CIFAR-10 training images to calibrate its static fp8 scales on ({e})"

    @staticmethod
    def _capture(pred):
        """((graph, static input, static logits), None) for a batch-1 forward replayed from a CUDA graph, as a
        deployment would run it (and as `bench_e2e` times its graphed rows); (None, reason) if it cannot."""
        from qvit.profiling.bench_e2e import capture_graph
        x = torch.zeros(1, 3, pred.size, pred.size, device=pred.device, dtype=pred.dtype)
        got, why = capture_graph(pred.model, x)
        return ((got[0], x, got[1]), None) if got else (None, why[:80])

    def _samples(self, n):
        try:
            from qvit.train.data import load_cifar10
            x, y = load_cifar10("test")
        except Exception:  # noqa: BLE001  (the demo still works on uploads alone)
            return []
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:n]
        return [(x[i], int(y[i])) for i in idx]

    def _png(self, img_u8) -> bytes:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(img_u8.permute(1, 2, 0).numpy()).resize((96, 96), Image.NEAREST).save(buf, "PNG")
        return buf.getvalue()

    def _run(self, name, x):
        """top-5 and the model's latency in ms: on a GPU the CUDA-event time of the forward (the graph replay
        where captured, timed with the replay already queued behind a short GPU spin, as in a busy server),
        the quantity `bench_e2e` reports; on a CPU the wall time. The request's wall time
        (input copy, forward, synchronization, logits back) is kept beside it (`req`)."""
        v = self.variants[name]
        with self.lock:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                if v["graph"] is not None:
                    g, xs, out = v["graph"]
                    xs.copy_(x.to(device=xs.device, dtype=xs.dtype), non_blocking=True)
                    # keep the GPU busy while the host submits the graph: event a then stamps the start of the
                    # replay itself. Recorded on an idle GPU, it also timed the host's graph launch (a systematic
                    # +10-14 us, 3-6%, against bench_e2e's back-to-back replays: h200-gpu-6 demo_check.json)
                    torch.cuda._sleep(_LAUNCH_COVER_CYCLES)
                    a.record()
                    g.replay()
                    b.record()
                    z = out.float()
                else:
                    xd = x.to(device=self.device, dtype=v["pred"].dtype)
                    a.record()
                    with torch.no_grad():
                        y = v["pred"].model(xd)
                    b.record()
                    z = y.float()
                z = z.cpu()
                ms = a.elapsed_time(b)
            else:
                z = v["pred"].logits(x)
            req = (time.perf_counter() - t) * 1e3
            if self.device.type != "cuda":
                ms = req
        v["lat"].append(ms)
        v["req"].append(req)
        v["n"] += 1
        v["busy_s"] += req / 1e3
        p = z.softmax(-1)[0]
        top = p.topk(min(5, p.numel()))
        return [{"label": self.classes[i], "p": float(s)} for s, i in zip(top.values, top.indices.tolist())], ms

    def predict_tensor(self, x) -> dict:
        return {name: dict(zip(("top", "ms"), self._run(name, x))) for name in self.variants}

    def predict_bytes(self, data: bytes) -> dict:
        with tempfile.NamedTemporaryFile(suffix=".img") as f:
            f.write(data)
            f.flush()
            pred = next(iter(self.variants.values()))["pred"]
            x = pred.preprocess(f.name)  # raises DataError naming the problem for non-images
        return self.predict_tensor(x)

    def predict_sample(self, i: int) -> dict:
        img, label = self.samples[i]
        x = next(iter(self.variants.values()))["pred"].normalize(img)
        return {"label": self.classes[label], "variants": self.predict_tensor(x)}

    def stats(self) -> dict:
        out = {}
        for name, v in self.variants.items():
            lat = sorted(v["lat"])
            req = list(v["req"])
            out[name] = {"n": v["n"], "mean_ms": sum(lat) / len(lat) if lat else None,
                         "request_mean_ms": sum(req) / len(req) if req else None,
                         "p95_ms": lat[min(len(lat) - 1, int(0.95 * (len(lat) - 1) + 0.5))] if lat else None,
                         "img_per_s": v["n"] / v["busy_s"] if v["busy_s"] else None,
                         "weight_bytes": v["weight_bytes"], "gpu_bytes": v["gpu_bytes"], "backend": v["backend"],
                         "format": v["preset"], "stream_top1": self.stream["top1"].get(name)}
        return {"device": str(self.device), "model": os.path.basename(self.model_path), "variants": out,
                "left_out": dict(self.skipped), "stream_index": self.stream["index"]}

    def stream_loop(self, pause_s: float):
        k = 0
        while not self._stop.is_set() and self.samples:
            i = k % len(self.samples)
            r = self.predict_sample(i)
            self.stream = {"index": i, "top1": {n: v["top"][0]["label"] for n, v in r["variants"].items()}}
            k += 1
            self._stop.wait(pause_s)

    def stop(self):
        self._stop.set()


def _handler(demo: Demo):
    page = PAGE.replace("__VARIANTS__", json.dumps(list(demo.variants)))

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _send(self, code, body, ctype="application/json"):
            data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            try:
                if self.path in ("/", "/index.html"):
                    return self._send(200, page, "text/html; charset=utf-8")
                if self.path == "/api/stats":
                    return self._send(200, demo.stats())
                if self.path == "/api/samples":
                    return self._send(200, {"n": len(demo.samples)})
                if self.path.startswith("/api/sample/") and self.path.endswith(".png"):
                    i = int(self.path[len("/api/sample/"):-4])
                    return self._send(200, demo._png(demo.samples[i][0]), "image/png")
                if self.path.startswith("/api/predict_sample/"):
                    return self._send(200, demo.predict_sample(int(self.path.rsplit("/", 1)[1])))
                return self._send(404, {"error": f"no such page: {self.path}"})
            except (ValueError, IndexError) as e:
                return self._send(400, {"error": str(e)})

        def do_POST(self):
            if self.path != "/api/predict":
                return self._send(404, {"error": f"no such endpoint: {self.path}"})
            n = int(self.headers.get("Content-Length", "0"))
            if n <= 0 or n > 32 << 20:
                return self._send(400, {"error": f"upload size {n} bytes: expected 1 byte to 32 MiB"})
            try:
                return self._send(200, {"variants": demo.predict_bytes(self.rfile.read(n))})
            except ValueError as e:  # DataError: not an image
                return self._send(400, {"error": str(e)})
    return H


def serve(model_path: str | None = None, port: int = 8000, device: str | None = None, host: str = "127.0.0.1",
          pause_s: float | None = None, stream_images: int = 200):
    """Start the demo; returns (server, demo, thread). `server.shutdown()` and `demo.stop()` end it."""
    demo = Demo(model_path or default_model(), device, stream_images)
    srv = ThreadingHTTPServer((host, port), _handler(demo))
    if pause_s is None:
        pause_s = 0.0 if demo.device.type == "cuda" else 0.05
    threading.Thread(target=demo.stream_loop, args=(pause_s,), daemon=True).start()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv, demo, t


def _after_pause(fn, pause_s: float):
    """fn, called after the device has been left idle for pause_s (synchronize, then sleep)."""
    def run():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        time.sleep(pause_s)
        return fn()
    return run


def check(model_path: str | None = None, device: str | None = None, n: int = 100, warmup: int = 10) -> dict:
    """Headless consistency check of the demo's numbers: each variant's batch-1 latency as the demo shows it
    (measured inside its request path: sample image -> normalize -> copy -> graph replay, CUDA events around
    the replay) against the benchmark harness's timing of the same model on a batch-1 input
    (`bench_e2e._graphed` + `_time_iters`: a capture of its own, CUDA events per replay; eager where the demo
    could not capture). A ratio of the medians far from 1 means the page shows something else than what the
    benchmark measures. The request's wall time (copy, replay, synchronization, logits back) is reported
    beside it (`request_ms`): that is the demo's overhead, not a model latency."""
    from qvit.profiling.bench_e2e import _graphed, _stats, _time_iters
    demo = Demo(model_path or default_model(), device, stream_images=max(n, warmup))
    if not demo.samples:
        raise FileNotFoundError("demo check: no CIFAR-10 test images found (datasets/cifar10)")
    res = {"model": os.path.basename(demo.model_path), "device": str(demo.device), "n": n, "variants": {}}
    if demo.device.type == "cuda":
        res["card"] = torch.cuda.get_device_name(demo.device)
    for i in range(warmup):  # autotuning, first launches
        demo.predict_sample(i % len(demo.samples))
    for v in demo.variants.values():
        v["lat"].clear()
        v["req"].clear()
    t0 = time.perf_counter()
    for i in range(n):
        demo.predict_sample(i % len(demo.samples))
    # the host time per request and variant outside the timed forward: the pause the idle benchmark imitates
    n_var = max(len(demo.variants), 1)
    idle_s = max(0.0, ((time.perf_counter() - t0) * 1e3 / n - sum(
        sum(v["lat"]) / max(len(v["lat"]), 1) for v in demo.variants.values())) / n_var / 1e3)
    res["pause_ms"] = idle_s * 1e3
    for name, v in demo.variants.items():
        pred = v["pred"]
        x = pred.normalize(demo.samples[0][0]).to(device=pred.device, dtype=pred.dtype)
        with torch.no_grad():
            if v["graph"] is not None:  # bench_e2e's graphed timing: a fresh capture of the same model
                replay, why = _graphed(pred.model, x)
            else:
                replay, why = (lambda: pred.model(x)), None
            bench = _stats(_time_iters(replay, n, pred.device)) if replay else {"error": why}
            # the same timing with the demo's pause before every call (a request's host work leaves the GPU
            # idle ~0.1-0.5 ms between replays; the benchmark replays back to back): if this matches the demo's
            # number, the gap between demo and benchmark is that idle time, not a different measurement
            bench_idle = _stats(_time_iters(_after_pause(replay, idle_s), n, pred.device)) if replay else None
        lat = sorted(v["lat"])
        req = sorted(v["req"])
        shown = {"mean": sum(lat) / len(lat), "p50": lat[len(lat) // 2], "n": len(lat)}
        res["variants"][name] = {"demo_ms": shown, "bench_ms": bench, "bench_after_pause_ms": bench_idle,
                                 "ratio_p50": shown["p50"] / bench["p50"] if "p50" in bench else None,
                                 "request_ms": {"mean": sum(req) / len(req), "p50": req[len(req) // 2]},
                                 "backend": v["backend"]}
        if "p50" not in bench:
            print(f"qvit demo check: {name:28s} benchmark failed: {bench['error']}", file=sys.stderr)
            continue
        idle = f", after a {idle_s * 1e3:.2f}-ms pause {bench_idle['p50']:.3f} ms" if bench_idle else ""
        print(f"qvit demo check: {name:28s} demo p50 {shown['p50']:.3f} ms, benchmark p50 {bench['p50']:.3f} ms"
              f"{idle}, ratio {shown['p50'] / bench['p50']:.2f}; request p50 "
              f"{res['variants'][name]['request_ms']['p50']:.3f} ms", file=sys.stderr)
    demo.stop()
    return res


def main(args) -> int:
    if getattr(args, "check", None):
        res = check(args.model, args.device, args.check)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
        return 0
    srv, demo, t = serve(args.model, args.port, args.device, args.host)
    print(f"qvit demo: http://{args.host}:{srv.server_address[1]}/  ({demo.model_path} on {demo.device}; "
          "Ctrl-C stops)", file=sys.stderr)
    try:
        t.join()
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
        srv.shutdown()
    return 0


PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>qvit: five variants, live</title>
<style>
 body{font-family:system-ui,sans-serif;margin:16px;background:#f6f7f9;color:#222}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#555;font-size:13px;margin-bottom:12px}
 #samples img{width:48px;height:48px;margin:2px;cursor:pointer;border:2px solid transparent;image-rendering:pixelated}
 #samples img.sel{border-color:#d33}
 #grid{display:grid;grid-template-columns:repeat(5,1fr);gap:10px;margin-top:12px}
 .card{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 3px #0002;font-size:13px}
 .card h2{font-size:14px;margin:0 0 6px} .bar{height:8px;background:#4a7;border-radius:4px}
 .row{display:flex;justify-content:space-between;gap:6px} .k{color:#666} .err{color:#b00}
 #chosen{width:96px;height:96px;image-rendering:pixelated;vertical-align:middle;border:1px solid #ccc}
</style></head><body>
<h1>qvit: the five study variants, side by side</h1>
<div class="sub" id="info">loading...</div>
<div><img id="chosen" alt=""> <span id="truth"></span>
 <label>upload an image: <input type="file" id="file" accept="image/*"></label> <span id="msg" class="err"></span></div>
<div id="samples"></div>
<div id="grid"></div>
<script>
const VARIANTS = __VARIANTS__;
const grid = document.getElementById('grid');
for (const v of VARIANTS) {
  const c = document.createElement('div'); c.className = 'card'; c.dataset.v = v;
  c.innerHTML = `<h2>${v}</h2><div class="top"></div><hr><div class="stats"></div>`;
  grid.appendChild(c);
}
const card = v => grid.querySelector(`[data-v="${CSS.escape(v)}"]`);
function showPred(r) {
  for (const v of VARIANTS) {
    const x = r.variants[v]; const el = card(v).querySelector('.top');
    el.innerHTML = x.top.map(t => `<div class="row"><span>${t.label}</span><span>${(100*t.p).toFixed(1)}%</span></div>
      <div class="bar" style="width:${Math.max(2, 100*t.p)}%"></div>`).join('') +
      `<div class="row k"><span>this image</span><span>${x.ms.toFixed(2)} ms</span></div>`;
  }
}
const fmtB = b => b == null ? 'n/a (CPU)' : (b / 2**20).toFixed(2) + ' MiB';
async function stats() {
  const s = await (await fetch('/api/stats')).json();
  document.getElementById('info').textContent =
    `model ${s.model} on ${s.device}` + (s.device === 'cpu' ? ' (reference PyTorch backends: slower than the GPU kernels)' : '') +
    ` - background stream at test image ${s.stream_index}`;
  for (const v of VARIANTS) {
    const x = s.variants[v];
    card(v).querySelector('.stats').innerHTML = [
      ['format', x.format], ['backends', x.backend],
      ['latency mean', x.mean_ms == null ? '-' : x.mean_ms.toFixed(2) + ' ms'],
      ['latency p95', x.p95_ms == null ? '-' : x.p95_ms.toFixed(2) + ' ms'],
      ['request mean', x.request_mean_ms == null ? '-' : x.request_mean_ms.toFixed(2) + ' ms'],
      ['throughput', x.img_per_s == null ? '-' : x.img_per_s.toFixed(1) + ' img/s'],
      ['runs', x.n], ['weights', fmtB(x.weight_bytes)], ['GPU memory', fmtB(x.gpu_bytes)],
      ['stream top-1', x.stream_top1 || '-']].map(([k, val]) =>
      `<div class="row"><span class="k">${k}</span><span>${val}</span></div>`).join('');
  }
}
async function pick(i) {
  document.querySelectorAll('#samples img').forEach((im, j) => im.className = j === i ? 'sel' : '');
  document.getElementById('chosen').src = `/api/sample/${i}.png`;
  const r = await (await fetch(`/api/predict_sample/${i}`)).json();
  document.getElementById('truth').textContent = `true label: ${r.label}`;
  document.getElementById('msg').textContent = '';
  showPred(r);
}
document.getElementById('file').onchange = async e => {
  const f = e.target.files[0]; if (!f) return;
  document.getElementById('chosen').src = URL.createObjectURL(f);
  document.getElementById('truth').textContent = f.name;
  const r = await fetch('/api/predict', {method: 'POST', body: f});
  const j = await r.json();
  if (!r.ok) { document.getElementById('msg').textContent = j.error; return; }
  document.getElementById('msg').textContent = ''; showPred(j);
};
(async () => {
  const n = (await (await fetch('/api/samples')).json()).n;
  const s = document.getElementById('samples');
  for (let i = 0; i < Math.min(n, 16); i++) {
    const im = document.createElement('img'); im.src = `/api/sample/${i}.png`; im.onclick = () => pick(i); s.appendChild(im);
  }
  if (n) await pick(0);
  await stats(); setInterval(stats, 1000);
})();
</script></body></html>
"""
