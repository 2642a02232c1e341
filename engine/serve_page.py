"""The page ``tapdiff serve`` answers at ``GET /``: pick digits, a count, the guidance and the sampler, generate,
then play each clip and see its log-Mel spectrogram. Plain HTML and JavaScript, no external resources: it
reads the checkpoint's digits and solvers from ``GET /info`` and asks ``POST /generate`` with
``"format": "json"`` (each clip's WAV in base64 and its log-Mel), so what it plays are the bytes the WAV
answer of the same request holds."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tapdiff</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }
  fieldset { margin-bottom: 1em; }
  label { margin-right: 1em; }
  figure { display: inline-block; margin: 0 1em 1em 0; }
  canvas { display: block; image-rendering: pixelated; border: 1px solid #ccc; }
  #status { min-height: 1.5em; color: #555; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>tapdiff</h1>
<p id="about">Loading the checkpoint's description&hellip;</p>
<form id="form">
  <fieldset><legend>Digits</legend><span id="digits"></span></fieldset>
  <fieldset><legend>Settings</legend>
    <label>Clips per digit <input id="count" type="number" min="1" max="4" value="1"></label>
    <label>Guidance <input id="guidance" type="number" min="0" max="10" step="0.5" value="3"></label>
    <label>Sampler <select id="sampler"><option value="">checkpoint default</option></select></label>
  </fieldset>
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status"></p>
<div id="clips"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

function colour(v) {  // v in [0, 1] -> a dark-to-bright ramp
  const r = Math.round(255 * Math.min(1, Math.max(0, 1.5 * v - 0.2)));
  const g = Math.round(255 * Math.min(1, Math.max(0, 1.5 * v - 0.5)));
  const b = Math.round(255 * Math.min(1, Math.max(0, 0.6 + 0.8 * v - 1.2 * v * v)));
  return [r, g, b];
}

function drawMel(canvas, mel, lo, hi) {  // mel: [n_mels][frames], low frequencies at the bottom
  const bands = mel.length, frames = mel[0].length, scale = 4;
  canvas.width = frames * scale; canvas.height = bands * scale;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(frames, bands);
  for (let m = 0; m < bands; m++) {
    for (let t = 0; t < frames; t++) {
      const [r, g, b] = colour((mel[m][t] - lo) / Math.max(hi - lo, 1e-6));
      const i = 4 * ((bands - 1 - m) * frames + t);
      img.data[i] = r; img.data[i + 1] = g; img.data[i + 2] = b; img.data[i + 3] = 255;
    }
  }
  const small = document.createElement("canvas");
  small.width = frames; small.height = bands;
  small.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function wavUrl(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
}

async function load() {
  const info = await (await fetch("info")).json();
  $("about").textContent = `Checkpoint ${info.checkpoint}, model ${info.model}, default sampler ${info.sampler}, ` +
    `${info.vocoder} vocoder, ${info.sample_rate} Hz.`;
  for (const d of info.labels) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" name="digit" value="${d}"${d === info.labels[0] ? " checked" : ""}> ${d}`;
    $("digits").appendChild(label);
  }
  $("count").max = Math.max(1, Math.min(4, info.limits.max_clips));
  for (const s of info.samplers) {
    const o = document.createElement("option"); o.value = s; o.textContent = s; $("sampler").appendChild(o);
  }
  $("guidance").max = info.limits.max_guidance;
  document.body.dataset.ready = "1";
}

async function generate(event) {
  event.preventDefault();
  const digits = [...document.querySelectorAll("input[name=digit]:checked")].map((e) => Number(e.value));
  if (!digits.length) { $("status").textContent = "Pick at least one digit."; return; }
  const body = { digit: digits, n: Number($("count").value), guidance: Number($("guidance").value), format: "json" };
  if ($("sampler").value) body.sampler = $("sampler").value;
  $("generate").disabled = true; $("status").className = ""; $("status").textContent = "Generating\\u2026";
  const t0 = performance.now();
  try {
    const r = await fetch("generate", { method: "POST", headers: { "content-type": "application/json" },
                                        body: JSON.stringify(body) });
    const answer = await r.json();
    if (!r.ok) throw new Error(typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail));
    $("clips").replaceChildren();
    for (const clip of answer.clips) {
      const fig = document.createElement("figure");
      const canvas = document.createElement("canvas");
      drawMel(canvas, clip.mel, answer.mel_range[0], answer.mel_range[1]);
      const audio = document.createElement("audio");
      audio.controls = true; audio.preload = "auto"; audio.src = wavUrl(clip.wav); audio.dataset.name = clip.name;
      const cap = document.createElement("figcaption"); cap.textContent = `${clip.name}.wav`;
      fig.append(cap, canvas, audio);
      $("clips").appendChild(fig);
    }
    $("status").textContent = `${answer.clips.length} clip(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  } catch (e) {
    $("status").className = "error"; $("status").textContent = `Error: ${e.message}`;
  } finally {
    $("generate").disabled = false;
  }
}

$("form").addEventListener("submit", generate);
load().catch((e) => { $("about").className = "error"; $("about").textContent = `Error: ${e.message}`; });
</script>
</body>
</html>
"""
