// The focal point widget: drag a box on the image, or click for a small box around a point.
// The hidden input gets "x,y,w,h" in fractions of the image as shown (the browser shows it
// upright, EXIF orientation applied), which is what set_focal_point() takes.
"use strict";
(function () {
  // A click makes a box this share of each side, centred on the point.
  const CLICK_SIZE = 0.1;
  // Pointer travel (CSS px) under which a press counts as a click, not a drag.
  const CLICK_SLOP = 4;
  // The smallest side a box gets, as a share of the image's side.
  const MIN_SIZE = 0.01;

  function clamp(value, low, high) {
    return Math.min(Math.max(value, low), high);
  }

  function setUp(widget) {
    const frame = widget.querySelector("[data-rw-focal-frame]");
    const image = widget.querySelector("[data-rw-focal-image]");
    const box = widget.querySelector("[data-rw-focal-box]");
    const input = widget.querySelector("input[type=hidden]");
    const clear = widget.querySelector("[data-rw-focal-clear]");
    if (!frame || !image || !box || !input) {
      return;
    }
    let start = null;

    function fraction(event) {
      const rect = image.getBoundingClientRect();
      return {
        x: clamp((event.clientX - rect.left) / rect.width, 0, 1),
        y: clamp((event.clientY - rect.top) / rect.height, 0, 1),
        px: event.clientX,
        py: event.clientY,
      };
    }

    function show(x, y, width, height) {
      if (width <= 0 || height <= 0) {
        box.hidden = true;
        input.value = "";
        return;
      }
      // Four decimals, as the server stores them; the rounded box must stay inside 0..1
      // and keep some size (a drag along one edge is a thin box, not none).
      x = Number(clamp(x, 0, 1 - MIN_SIZE).toFixed(4));
      y = Number(clamp(y, 0, 1 - MIN_SIZE).toFixed(4));
      width = Number(clamp(width, MIN_SIZE, 1 - x).toFixed(4));
      height = Number(clamp(height, MIN_SIZE, 1 - y).toFixed(4));
      width = Math.min(width, Number((1 - x).toFixed(4)));
      height = Math.min(height, Number((1 - y).toFixed(4)));
      box.hidden = false;
      box.style.left = `${x * 100}%`;
      box.style.top = `${y * 100}%`;
      box.style.width = `${width * 100}%`;
      box.style.height = `${height * 100}%`;
      input.value = [x, y, width, height].map((value) => value.toFixed(4)).join(",");
    }

    function between(from, to) {
      const x = Math.min(from.x, to.x);
      const y = Math.min(from.y, to.y);
      show(x, y, Math.max(Math.abs(to.x - from.x), MIN_SIZE), Math.max(Math.abs(to.y - from.y), MIN_SIZE));
    }

    frame.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      start = fraction(event);
      frame.setPointerCapture(event.pointerId);
    });
    frame.addEventListener("pointermove", (event) => {
      if (start !== null) {
        between(start, fraction(event));
      }
    });
    frame.addEventListener("pointerup", (event) => {
      if (start === null) {
        return;
      }
      const end = fraction(event);
      if (Math.hypot(end.px - start.px, end.py - start.py) < CLICK_SLOP) {
        const x = clamp(end.x - CLICK_SIZE / 2, 0, 1 - CLICK_SIZE);
        const y = clamp(end.y - CLICK_SIZE / 2, 0, 1 - CLICK_SIZE);
        show(x, y, CLICK_SIZE, CLICK_SIZE);
      } else {
        between(start, end);
      }
      start = null;
    });
    if (clear) {
      clear.addEventListener("click", () => show(0, 0, 0, 0));
    }
  }

  function setUpAll() {
    document.querySelectorAll("[data-rw-focal]").forEach(setUp);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUpAll);
  } else {
    setUpAll();
  }
})();
