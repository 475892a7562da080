package trace

import (
	"fmt"
	"os"
)

// Sources are the trace files one attach may name, strongest first within
// recording and within replay.
type Sources struct {
	// Record is the run-time recording (`obd attach --record-trace`).
	Record string
	// Prefetch is the run-time replay (`obd attach --prefetch`).
	Prefetch string
	// Acceleration is the acceleration layer's trace file ("" = none).
	Acceleration string
	// Configured is the config's recordTracePath: an empty file asks for a
	// recording, a non-empty one is replayed (the reference's protocol).
	Configured string
}

// Plan is the one trace job of an attach: record reads into Path, replay the trace
// or file list at Path, or nothing (ModeDisabled).
type Plan struct {
	Mode Mode
	Path string
}

// Recording reports whether the plan records reads.
func (p Plan) Recording() bool { return p.Mode == ModeRecord }

// Replaying reports whether the plan replays a trace or a file list.
func (p Plan) Replaying() bool { return p.Mode == ModeReplayTrace || p.Mode == ModeReplayFileList }

// Decide picks the attach's trace job. A recording wins over a replay; a run-time
// file wins over the acceleration layer, which wins over recordTracePath. Each file
// is classified once. A replay file that is neither missing nor a file list is
// planned as a binary trace, whose reader then reports what is wrong with it.
func Decide(s Sources) (Plan, error) {
	record, replay := s.Record, s.Prefetch
	if replay == "" {
		replay = s.Acceleration
	}
	replayMode := ModeDisabled // not classified yet
	if p := s.Configured; p != "" {
		switch mode, err := DetectMode(p); {
		case err != nil:
			return Plan{}, fmt.Errorf("recordTracePath: %w", err)
		case mode == ModeRecord && record == "":
			record = p
		case (mode == ModeReplayTrace || mode == ModeReplayFileList) && replay == "":
			replay, replayMode = p, mode
		}
	}
	switch {
	case record != "":
		return Plan{Mode: ModeRecord, Path: record}, nil
	case replay == "":
		return Plan{}, nil
	case replayMode != ModeDisabled:
		return Plan{Mode: replayMode, Path: replay}, nil
	}
	switch mode, err := DetectMode(replay); {
	case err == nil && mode == ModeDisabled:
		return Plan{}, nil // e.g. an acceleration layer without a trace
	case err == nil && mode == ModeReplayFileList:
		return Plan{Mode: ModeReplayFileList, Path: replay}, nil
	}
	return Plan{Mode: ModeReplayTrace, Path: replay}, nil
}

// Recovery is what becomes of a recording whose process died: its reads were
// in that process's memory and are lost.
type Recovery int

const (
	// RecoveryResume: <trace>.lock is still there (nobody asked for the dump
	// yet): the recording starts again, without the reads before the restart.
	RecoveryResume Recovery = iota
	// RecoveryDone: the trace was dumped (<trace>.ok): not recording again.
	RecoveryDone
	// RecoveryLost: the lock was deleted while no process recorded: nothing can
	// be dumped and the trace stays unwritten.
	RecoveryLost
)

// RecoverRecording applies the .lock/.ok protocol to a recording into path whose
// process died.
func RecoverRecording(path string) Recovery {
	if _, err := os.Lstat(LockPath(path)); err == nil {
		return RecoveryResume
	}
	if _, err := os.Lstat(OKPath(path)); err == nil {
		return RecoveryDone
	}
	return RecoveryLost
}
