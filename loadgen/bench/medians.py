# Medians of runs/PREFIX_{1,2,3}.json: python3 medians.py KEY,KEY… PREFIX…
import json,os,sys,statistics as st
B=os.environ.get('B','/var/tmp/lgbench')
def load(prefix):
    out=[]
    for i in (1,2,3,4,5):
        try: out.append(json.load(open(f'{B}/runs/{prefix}_{i}.json')))
        except FileNotFoundError: pass
    return out
def get(r,k):
    if k.startswith('del.'): return r['delivery_latency_us'][k[4:]]
    if k.startswith('ack.'): return r['ack_latency_us'][k[4:]]
    if k=='recover_ms': return r['storm']['recover_ms']
    return r[k]
for prefix in sys.argv[2:]:
    rs=load(prefix)
    for k in sys.argv[1].split(','):
        vals=[get(r,k) for r in rs]
        fmt=lambda v: f'{v:,.0f}' if isinstance(v,(int,float)) else str(v)
        print(f'{prefix:18} {k:22} runs={" / ".join(fmt(v) for v in vals):40} median={fmt(st.median(vals))}')
    print(f'{prefix:18} lost={[r["lost"] for r in rs]} dup={[r["duplicates"] for r in rs]} ooo={[r["out_of_order"] for r in rs]}')
