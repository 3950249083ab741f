"""The report's page: HTML building blocks, the inline stylesheet and the inline script of
the 2-D map. Nothing is fetched from the network; every string that came from outside
(paths, class names, reasons) goes through :func:`text` or :func:`json_for_script`."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path


def clean(s) -> str:
    """``s`` as valid Unicode: lone surrogates (undecodable bytes in file names) become U+FFFD."""
    return str(s).encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def text(s) -> str:
    """Escape for HTML text and quoted attribute values."""
    return html.escape(clean(s), quote=True)


def file_uri(path: str) -> str | None:
    """``file://`` URI of ``path`` (so a click opens the original), or None when it has none."""
    try:
        return Path(os.path.abspath(clean(path))).as_uri()
    except ValueError:
        return None


def json_for_script(obj) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    can close the element or start markup, whatever the strings hold."""
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def thumb(uri: str | None, path: str, caption: str = "") -> str:
    """One thumbnail with its path as tooltip, linking to the original file."""
    title = text(path)
    cap = f"<figcaption>{text(caption)}</figcaption>" if caption else ""
    if uri is None:
        body = f'<span class="missing" title="{title}">unreadable</span>'
    else:
        body = f'<img src="{uri}" alt="{title}" title="{title}">'
    href = file_uri(path)
    if href is not None:
        body = f'<a href="{text(href)}">{body}</a>'
    return f'<figure class="th">{body}{cap}</figure>'


def table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{text(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde1e8;--bg:#f6f7f9;--card:#fff;--accent:#2f6fb1}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c6ccd8}
main{max-width:1400px;margin:0 auto;padding:16px 28px 60px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:18px;margin:0 0 10px}
h3{font-size:15px;margin:12px 0 6px;color:var(--muted);font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}
.card span{color:var(--muted);font-size:12px}
nav.toc{display:flex;flex-wrap:wrap;gap:6px}
nav.toc a{border:1px solid var(--line);border-radius:12px;padding:2px 9px;text-decoration:none;color:var(--fg);font-size:12px}
nav.toc a i,.legend i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:5px;vertical-align:-1px}
.maprow{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
#map{flex:1 1 640px;width:100%;max-width:900px;aspect-ratio:1.45;border:1px solid var(--line);border-radius:6px;cursor:crosshair;background:#fff}
#info{flex:0 0 260px;font-size:13px}
#info canvas{width:128px;height:128px;border:1px solid var(--line);image-rendering:pixelated;background:#eee}
#info .path{word-break:break-all;font-family:ui-monospace,monospace;font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:4px;margin:8px 0}
.legend button{border:1px solid var(--line);background:#fff;border-radius:12px;padding:1px 8px;font-size:12px;cursor:pointer}
.legend button.off{opacity:.35}
.plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.plots img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left}
td{font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:4px}
figure.th{margin:0;text-align:center}
figure.th img,figure.th .missing{width:64px;height:64px;object-fit:contain;background:#eee;border-radius:3px;image-rendering:auto;display:block}
figure.th .missing{font-size:10px;line-height:64px;color:var(--muted)}
figure.th figcaption{font-size:10px;color:var(--muted);max-width:64px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.cluster h2 i{display:inline-block;width:14px;height:14px;border-radius:50%;margin-right:8px;vertical-align:-1px}
.meta{color:var(--muted);margin:0 0 6px}
.note{color:var(--muted);font-size:12px}
.skipped td:first-child{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
"""

# The map: a canvas of all (sampled) points, coloured by cluster or by class; hover shows
# the nearest point's preview (cut from the atlas image) and path; click pins it; the legend
# toggles clusters. Plain DOM + canvas, no library.
JS = r"""
(function(){
"use strict";
var D=JSON.parse(document.getElementById("map-data").textContent);
var cv=document.getElementById("map"),ctx=cv.getContext("2d");
var info=document.getElementById("info"),pv=document.getElementById("preview"),pctx=pv.getContext("2d");
var atlas=document.getElementById("atlas");
var n=D.x.length,byClass=false,pinned=-1,hover=-1,off={};
var W=0,H=0,dpr=1,PAD=12;
function colorOf(i){
  if(byClass&&D.l){return D.classColors[D.l[i]];}
  return D.colors[D.c[i]];
}
function px(i){return PAD+D.x[i]/4095*(W-2*PAD);}
function py(i){return PAD+(1-D.y[i]/4095)*(H-2*PAD);}
// Spatial grid in data units (0..4095) for nearest-point lookups.
var G=64,cells={};
for(var i=0;i<n;i++){var k=((D.x[i]>>6)*G)+(D.y[i]>>6);(cells[k]||(cells[k]=[])).push(i);}
function nearest(mx,my){
  var dx=(mx-PAD)/(W-2*PAD)*4095,dy=(1-(my-PAD)/(H-2*PAD))*4095;
  var cx=Math.floor(dx/64),cy=Math.floor(dy/64),best=-1,bd=Infinity;
  var r=Math.max(1,Math.ceil(14/((W-2*PAD)/4095*64)));
  for(var a=cx-r;a<=cx+r;a++){for(var b=cy-r;b<=cy+r;b++){
    var L=cells[a*G+b];if(!L)continue;
    for(var j=0;j<L.length;j++){var p=L[j];if(off[D.c[p]])continue;
      var ex=px(p)-mx,ey=py(p)-my,d=ex*ex+ey*ey;if(d<bd){bd=d;best=p;}}
  }}
  return bd<=196?best:-1;
}
function draw(){
  ctx.setTransform(dpr,0,0,dpr,0,0);
  ctx.clearRect(0,0,W,H);
  var s=n>5000?2:(n>500?3:5);
  for(var i=0;i<n;i++){
    if(off[D.c[i]])continue;
    ctx.fillStyle=colorOf(i);
    ctx.fillRect(px(i)-s/2,py(i)-s/2,s,s);
  }
  [pinned,hover].forEach(function(p){if(p<0)return;
    ctx.beginPath();ctx.arc(px(p),py(p),6,0,2*Math.PI);ctx.lineWidth=2;ctx.strokeStyle="#000";ctx.stroke();});
}
function resize(){
  dpr=window.devicePixelRatio||1;W=cv.clientWidth;H=cv.clientHeight;
  cv.width=Math.round(W*dpr);cv.height=Math.round(H*dpr);draw();
}
function fileHref(p){
  if(p.charAt(0)!=="/")return null;
  return "file://"+p.split("/").map(encodeURIComponent).join("/");
}
function show(i){
  var f=info.querySelector(".fields");
  pctx.clearRect(0,0,pv.width,pv.height);
  if(i<0){f.textContent="Hover over a point to see the image; click to pin it.";return;}
  f.textContent="";
  function line(label,value,cls){var d=document.createElement("div");var b=document.createElement("b");
    b.textContent=label+" ";d.appendChild(b);var s=document.createElement("span");s.textContent=value;
    if(cls)s.className=cls;d.appendChild(s);f.appendChild(d);}
  line("cluster",D.clusterNames[D.c[i]]);
  line("confidence",D.f[i].toFixed(3));
  if(D.l)line("class",D.classes[D.l[i]]);
  line("path",D.p[i],"path");
  var h=fileHref(D.p[i]);
  if(h){var a=document.createElement("a");a.href=h;a.textContent="open original";f.appendChild(a);}
  var t=D.t[i];
  if(t>=0&&atlas&&atlas.complete&&atlas.naturalWidth){
    var c=D.atlas.cell,sx=(t%D.atlas.cols)*c,sy=Math.floor(t/D.atlas.cols)*c;
    pctx.imageSmoothingEnabled=false;pctx.drawImage(atlas,sx,sy,c,c,0,0,pv.width,pv.height);
  }else{
    var d=document.createElement("div");d.className="note";
    d.textContent="no preview embedded for this point (previews are sampled)";f.appendChild(d);
  }
}
cv.addEventListener("mousemove",function(e){
  var r=cv.getBoundingClientRect(),i=nearest(e.clientX-r.left,e.clientY-r.top);
  if(i!==hover){hover=i;if(pinned<0)show(i);draw();}
});
cv.addEventListener("mouseleave",function(){hover=-1;if(pinned<0)show(-1);draw();});
cv.addEventListener("click",function(e){
  var r=cv.getBoundingClientRect(),i=nearest(e.clientX-r.left,e.clientY-r.top);
  pinned=(i===pinned)?-1:i;show(pinned>=0?pinned:i);draw();
});
document.querySelectorAll(".legend button[data-c]").forEach(function(b){
  b.addEventListener("click",function(){var c=+b.getAttribute("data-c");off[c]=!off[c];
    b.classList.toggle("off",!!off[c]);draw();});
});
var sel=document.getElementById("colour-by");
if(sel)sel.addEventListener("change",function(){byClass=sel.value==="class";draw();});
window.addEventListener("resize",resize);
if(atlas&&!atlas.complete)atlas.addEventListener("load",function(){if(pinned>=0)show(pinned);});
resize();show(-1);
cv.setAttribute("data-drawn",String(n));
})();
"""


def page(title: str, subtitle: str, body: str, map_json: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        # Inline only: the page must work opened from disk with no network.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{text(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{text(title)}</h1><p>{text(subtitle)}</p></header><main>{body}</main>"
        f"<script type=\"application/json\" id=\"map-data\">{map_json}</script>"
        f"<script>{JS}</script></body></html>\n"
    )
