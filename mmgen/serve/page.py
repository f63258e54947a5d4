"""The upload page served at ``/``: choose or drop an image, see its caption beside it.

One self-contained HTML document (inline style and script, nothing fetched from elsewhere) that posts
the file to ``/v1/caption`` as a multipart form, and says which model answers (``/v1/model``).
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmgen captioning</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .3rem; }
  [hidden] { display: none !important; }
  #model { color: #555; margin: 0 0 1.2rem 0; }
  #model b { color: #222; }
  .cut { color: #a60; font-size: .9rem; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop.over { background: #eef5ff; border-color: #36c; }
  #result { display: flex; gap: 1.5rem; align-items: flex-start; margin-top: 1.5rem; }
  #preview { max-width: 20rem; max-height: 20rem; image-rendering: pixelated; min-width: 8rem; }
  #caption { font-size: 1.3rem; margin: 0 0 .5rem 0; }
  #details { color: #666; font-size: .9rem; }
  #error { color: #b00; }
  label { margin-right: 1rem; }
  input[type=number] { width: 4rem; }
</style>
</head>
<body>
<h1>Caption an image</h1>
<p id="model">&nbsp;</p>
<div id="drop">Drop an image here, or <label for="file"><u>choose a file</u></label>
  <input id="file" type="file" accept="image/*" hidden>
</div>
<p>
  <label>beams <input id="beams" type="number" min="1" max="8" placeholder="model"></label>
  <label>prompt <input id="prompt" type="text" placeholder="(the model's)"></label>
  <label>banned words <input id="bad_words" type="text" placeholder="comma-separated"></label>
</p>
<div id="result" hidden>
  <img id="preview" alt="the uploaded image">
  <div><p id="caption"></p><p id="details"></p><p id="error"></p></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
async function caption(file) {
  $("result").hidden = false;
  $("preview").src = URL.createObjectURL(file);
  $("caption").textContent = "";
  $("error").textContent = "";
  $("details").textContent = "captioning...";
  const form = new FormData();
  form.append("image", file, file.name);
  for (const key of ["beams", "prompt", "bad_words"]) {
    if ($(key).value.trim()) form.append(key, $(key).value.trim());
  }
  try {
    const response = await fetch("/v1/caption", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    $("caption").textContent = answer.caption;
    if (answer.truncated && answer.truncated[0]) {
      const cut = document.createElement("span");
      cut.className = "cut";
      cut.textContent = " (cut short: stopped at max_new_tokens)";
      $("caption").appendChild(cut);
    }
    $("details").textContent = "score " + answer.scores[0].toFixed(3) + ", batched with "
      + (answer.batch_size - 1) + " other image(s)";
  } catch (e) {
    $("details").textContent = "";
    $("error").textContent = String(e.message || e);
  }
}
fetch("/v1/model").then((r) => r.json()).then((m) => {
  const name = document.createElement("b");
  name.textContent = m.name;
  $("model").replaceChildren("Model ", name, ", trained on " + m.trained_on
    + (m.synthetic_data ? " (synthetic images: other pictures get captions about shapes)" : ""));
}).catch(() => { $("model").textContent = ""; });
$("file").addEventListener("change", () => { if ($("file").files[0]) caption($("file").files[0]); });
$("drop").addEventListener("click", (e) => { if (!e.target.closest("label")) $("file").click(); });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files[0]) caption(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
