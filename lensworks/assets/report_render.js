(function(){
  var specs = JSON.parse(document.getElementById('lw-figures').textContent);
  var config = {responsive: true, displaylogo: false};
  var jobs = specs.map(function(spec){
    var div = document.getElementById(spec.id);
    try {
      return Plotly.newPlot(div, spec.figure.data || [], spec.figure.layout || {}, config).catch(function(e){
        window.lwRecordError('figure ' + spec.id + ': ' + e); });
    } catch(e) { window.lwRecordError('figure ' + spec.id + ': ' + e); return Promise.resolve(); }
  });
  Promise.all(jobs).then(function(){
    document.body.setAttribute('data-lw-rendered', String(specs.length));
    var st = document.getElementById('lw-status'); if(st){ st.textContent = 'rendered ' + specs.length + ' figures'; }
  });

  var picker = document.getElementById('lw-head-picker');
  if(!picker){ return; }
  function top(values, labels, k){
    var pairs = [];
    for(var i = 0; i < values.length; i++){
      var v = values[i];
      if(v !== null && v !== undefined && !isNaN(v)){ pairs.push([v, labels[i]]); }
    }
    pairs.sort(function(a, b){ return b[0] - a[0]; });
    return pairs.slice(0, k);
  }
  function describe(list){
    if(!list.length){ return 'none'; }
    return list.map(function(p){ return p[1] + ' ' + p[0].toFixed(3); }).join(', ');
  }
  picker.addEventListener('change', function(){
    var head = picker.value;
    var out = document.getElementById('lw-head-summary');
    while(out.firstChild){ out.removeChild(out.firstChild); }
    document.querySelectorAll('.plot[data-kind="composition"]').forEach(function(div){
      var trace = (div.data || [])[0];
      if(!trace){ return; }
      var ys = trace.y || [], xs = trace.x || [];
      var r = ys.indexOf(head), c = xs.indexOf(head);
      var shapes = [];
      if(head && r >= 0){
        shapes.push({type:'rect', xref:'paper', yref:'y', x0:0, x1:1, y0:r-0.5, y1:r+0.5,
                     line:{color:'crimson', width:3}, fillcolor:'rgba(0,0,0,0)'});
      }
      if(head && c >= 0){
        shapes.push({type:'rect', xref:'x', yref:'paper', x0:c-0.5, x1:c+0.5, y0:0, y1:1,
                     line:{color:'orange', width:3, dash:'dot'}, fillcolor:'rgba(0,0,0,0)'});
      }
      Plotly.relayout(div, {shapes: shapes});
      if(head && r >= 0){
        var z = trace.z || [];
        var row = z[r] || [];
        var col = z.map(function(zr){ return zr[c]; });
        var li = document.createElement('li');
        li.textContent = (div.getAttribute('data-mode') || '') + '-composition: ' + head + ' is read most by ' +
          describe(top(row, xs, 3)) + '; reads most from ' + describe(top(col, ys, 3)) + '.';
        out.appendChild(li);
      }
    });
  });
})();
