package cache

import "sync"

// FetchGrouper is an optional capability of a Source: the name of the place its
// bytes come from (a registry host). Fetches are limited per group, so a source
// that hangs holds at most its group's share of the cache's fetch slots and
// other groups keep theirs. Sources without it form a group per blob.
type FetchGrouper interface {
	FetchGroup() string
}

// fetchLimiter bounds concurrent source reads: at most perGroup per group and
// total over all groups. When a slot frees, waiting groups take turns (round
// robin), so no group waits behind another group's queue: a slot is only ever
// refused to a group because that group is at its own limit or every slot is
// taken.
type fetchLimiter struct {
	perGroup, total int

	mu     sync.Mutex
	active int
	groups map[string]*fetchGroup
	turns  []*fetchGroup // groups with waiters, in turn order
}

type fetchGroup struct {
	name    string
	active  int
	waiters []chan struct{}
	queued  bool // in turns
}

func newFetchLimiter(perGroup, total int) *fetchLimiter {
	return &fetchLimiter{perGroup: perGroup, total: total, groups: map[string]*fetchGroup{}}
}

// acquire takes a slot of group, waiting for one.
func (l *fetchLimiter) acquire(group string) {
	l.mu.Lock()
	g := l.groups[group]
	if g == nil {
		g = &fetchGroup{name: group}
		l.groups[group] = g
	}
	if len(g.waiters) == 0 && g.active < l.perGroup && l.active < l.total {
		g.active++
		l.active++
		l.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	g.waiters = append(g.waiters, ch)
	if !g.queued {
		g.queued = true
		l.turns = append(l.turns, g)
	}
	l.mu.Unlock()
	<-ch
}

// release returns a slot of group and hands free slots to waiting groups in turn.
func (l *fetchLimiter) release(group string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.groups[group]
	g.active--
	l.active--
	for progress := true; progress && l.active < l.total; {
		progress = false
		for i := 0; i < len(l.turns) && l.active < l.total; i++ {
			w := l.turns[i]
			if w.active >= l.perGroup {
				continue
			}
			ch := w.waiters[0]
			w.waiters = w.waiters[1:]
			w.active++
			l.active++
			close(ch)
			progress = true
			// The group goes to the back of the turns (or leaves them).
			l.turns = append(l.turns[:i], l.turns[i+1:]...)
			i--
			if len(w.waiters) > 0 {
				l.turns = append(l.turns, w)
			} else {
				w.queued = false
			}
		}
	}
	if g.active == 0 && len(g.waiters) == 0 {
		delete(l.groups, group)
	}
}
