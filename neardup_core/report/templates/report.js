// After load: record each thumbnail's decoded width, and mark the ones that did not decode.
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img.thumb");
  for (var i = 0; i < images.length; i++) {
    images[i].dataset.naturalWidth = String(images[i].naturalWidth);
    if (!images[i].complete || images[i].naturalWidth === 0) images[i].classList.add("broken");
  }
  document.body.dataset.loaded = "true";
});
