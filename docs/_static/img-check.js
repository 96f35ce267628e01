// Written into the page once it has loaded: whether every <img> decoded (complete, naturalWidth > 0).
// The site check (make docs-check) reads it back from chromium --dump-dom.
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  var out = document.createElement("div");
  out.id = "qfocal-img-check";
  out.hidden = true;
  out.setAttribute("data-images", String(images.length));
  out.setAttribute("data-broken", broken.map(function (img) { return img.getAttribute("src"); }).join(" "));
  out.textContent = "IMG-CHECK images=" + images.length + " broken=" + broken.length;
  document.body.appendChild(out);
});
