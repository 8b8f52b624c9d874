#!/usr/bin/env python3
"""Lists functions in core/src outside tests longer than a limit (default 80 lines),
longest first, and exits 1 if there is any (CI runs it): `scripts/long-functions.py [DIR] [LIMIT]`. Test modules (from a
top-level `#[cfg(test)]` on), `tests.rs` and `layering.rs` are skipped."""
import os,re,sys
root=sys.argv[1] if len(sys.argv)>1 else 'core/src'
limit=int(sys.argv[2]) if len(sys.argv)>2 else 80
out=[]
for dp,_,fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or f in ('tests.rs','layering.rs'): continue
        p=os.path.join(dp,f); lines=open(p).read().split('\n')
        end=len(lines)
        for i,l in enumerate(lines):
            if l.startswith('#[cfg(test)]'): end=i; break
        for i in range(end):
            m=re.match(r'^(\s*)(pub(\([a-z]+\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)',lines[i])
            if not m or lines[i].rstrip().endswith(';'): continue
            ind=len(m.group(1)); j=i+1
            while j<end and not (lines[j].startswith(' '*ind+'}') and len(lines[j])-len(lines[j].lstrip())==ind):
                j+=1
            n=j-i+1
            if n>limit: out.append((n,p,i+1,m.group(6)))
for n,p,l,name in sorted(out,reverse=True): print(f"{n:4} {p}:{l} {name}")
sys.exit(1 if out else 0)
