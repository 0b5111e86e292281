(function(){
  var box = null, pending = [];
  function record(msg){
    box = box || document.getElementById('lw-errors');
    if(!box){ pending.push(msg); return; }
    while(pending.length){ box.appendChild(document.createTextNode(pending.shift() + '\n')); }
    box.appendChild(document.createTextNode(String(msg) + '\n'));
    box.style.display = 'block';
  }
  window.lwRecordError = record;
  window.addEventListener('error', function(e){ record('error: ' + (e.message || e)); });
  window.addEventListener('unhandledrejection', function(e){ record('unhandled rejection: ' + (e.reason && e.reason.message || e.reason)); });
})();
