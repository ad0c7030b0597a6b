// Hovering any element of a unit outlines that unit in every chart (the .hl rule in style.css).
document.addEventListener('mouseover', function (e) {
  var t = e.target.closest ? e.target.closest('[data-unit]') : null;
  document.querySelectorAll('.hl').forEach(function (n) { n.classList.remove('hl') });
  if (!t) return;
  var u = t.getAttribute('data-unit');
  document.querySelectorAll('[data-unit]').forEach(function (n) {
    if (n.getAttribute('data-unit') === u) n.classList.add('hl')
  })
});
