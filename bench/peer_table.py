# Reduces peer-llamacpp raw.jsonl (its speed rounds) to medians and ratios of medians, and compares
# the greedy ids with the prompt tokens Strata echoes dropped: /usr/bin/python3 bench/peer_table.py RESULTS/raw.jsonl
import json,statistics as st,collections,sys
d=sys.argv[1]
rows=[json.loads(l) for l in open(d)]
by=collections.defaultdict(lambda: collections.defaultdict(list)); ids={}
for r in rows:
    if r.get('kind')!='speed': continue
    e=r['engine']; res=r['result']
    for k in ('decode','prefill','batch'):
        if k in res: by[e][k].append(res[k]['tok_s'])
    if 'decode' in res and 'ids' in res['decode']: ids.setdefault(e,res['decode']['ids'])
med={e:{k:st.median(v) for k,v in m.items()} for e,m in by.items()}
print("medians (tok/s) of %d rounds:"%len(by['strata']['decode']))
for e in sorted(med): print("  %-12s decode %6.1f  prefill %6.1f  batch16 %6.1f"%(e,med[e]['decode'],med[e]['prefill'],med[e]['batch']))
print("ratios of medians:")
for s in ('strata','strata-bf16','strata-q8'):
    for l in ('llama-f32','llama-bf16','llama-q8_0'):
        print("  %-12s / %-10s decode %.2f  prefill %.2f  batch16 %.2f"%(s,l,med[s]['decode']/med[l]['decode'],med[s]['prefill']/med[l]['prefill'],med[s]['batch']/med[l]['batch']))
prompt=[10,20,30]
for s,l in (('strata','llama-f32'),('strata-bf16','llama-bf16'),('strata-q8','llama-q8_0')):
    a=ids[s]; a=a[len(prompt):] if a[:len(prompt)]==prompt else a
    b=ids[l]; n=0
    while n<min(len(a),len(b)) and a[n]==b[n]: n+=1
    print("  greedy ids %s vs %s: first %d of %d identical"%(s,l,n,min(len(a),len(b))))
