package ublk

import (
	"strings"
	"testing"
	"unsafe"
)

// Offsets of the C structs in include/uapi/linux/ublk_cmd.h and io_uring.h
// (6.12 headers; checked with offsetof in C).
func TestStructLayout(t *testing.T) {
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"ublksrv_ctrl_cmd.queue_id", unsafe.Offsetof(ctrlCmd{}.QueueID), 4},
		{"ublksrv_ctrl_cmd.len", unsafe.Offsetof(ctrlCmd{}.Len), 6},
		{"ublksrv_ctrl_cmd.addr", unsafe.Offsetof(ctrlCmd{}.Addr), 8},
		{"ublksrv_ctrl_cmd.data", unsafe.Offsetof(ctrlCmd{}.Data), 16},
		{"ublksrv_ctrl_cmd.dev_path_len", unsafe.Offsetof(ctrlCmd{}.DevPathLen), 24},
		{"sizeof ublksrv_ctrl_cmd", unsafe.Sizeof(ctrlCmd{}), 32},
		{"dev_info.state", unsafe.Offsetof(devInfo{}.State), 4},
		{"dev_info.max_io_buf_bytes", unsafe.Offsetof(devInfo{}.MaxIOBufBytes), 8},
		{"dev_info.dev_id", unsafe.Offsetof(devInfo{}.DevID), 12},
		{"dev_info.ublksrv_pid", unsafe.Offsetof(devInfo{}.ServerPID), 16},
		{"dev_info.flags", unsafe.Offsetof(devInfo{}.Flags), 24},
		{"dev_info.ublksrv_flags", unsafe.Offsetof(devInfo{}.ServerFlags), 32},
		{"dev_info.owner_uid", unsafe.Offsetof(devInfo{}.OwnerUID), 40},
		{"sizeof dev_info", unsafe.Sizeof(devInfo{}), 64},
		{"ublk_params.basic", unsafe.Offsetof(params{}.Basic), 8},
		{"ublk_params.discard", unsafe.Offsetof(params{}.Discard), 40},
		{"ublk_params.devt", unsafe.Offsetof(params{}.Devt), 60},
		{"ublk_params.zoned", unsafe.Offsetof(params{}.Zoned), 76},
		{"sizeof ublk_params", unsafe.Sizeof(params{}), 112},
		{"basic.max_sectors", unsafe.Offsetof(paramBasic{}.MaxSectors), 8},
		{"basic.dev_sectors", unsafe.Offsetof(paramBasic{}.DevSectors), 16},
		{"basic.virt_boundary_mask", unsafe.Offsetof(paramBasic{}.VirtBoundary), 24},
		{"discard.max_discard_segments", unsafe.Offsetof(paramDiscard{}.MaxDiscardSegments), 16},
		{"io_desc.start_sector", unsafe.Offsetof(ioDesc{}.StartSector), 8},
		{"io_desc.addr", unsafe.Offsetof(ioDesc{}.Addr), 16},
		{"io_cmd.result", unsafe.Offsetof(ioCmd{}.Result), 4},
		{"io_cmd.addr", unsafe.Offsetof(ioCmd{}.Addr), 8},
		{"io_uring_sqe.off", unsafe.Offsetof(sqe{}.Off), 8},
		{"io_uring_sqe.addr", unsafe.Offsetof(sqe{}.Addr), 16},
		{"io_uring_sqe.len", unsafe.Offsetof(sqe{}.Len), 24},
		{"io_uring_sqe.user_data", unsafe.Offsetof(sqe{}.UserData), 32},
		{"io_uring_sqe.buf_index", unsafe.Offsetof(sqe{}.BufIndex), 40},
		{"io_uring_sqe.cmd", unsafe.Offsetof(sqe{}.Cmd), sqeCmdOffset},
		{"io_uring_params.sq_off", unsafe.Offsetof(uringParams{}.SQOff), 40},
		{"io_uring_params.cq_off", unsafe.Offsetof(uringParams{}.CQOff), 80},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// The UBLK_U_* values of ublk_cmd.h.
func TestOpcodeEncoding(t *testing.T) {
	cases := []struct {
		name      string
		got, want uint32
	}{
		{"GET_QUEUE_AFFINITY", ctrlOp(nrGetQueueAffinity, false), 0x80207501},
		{"GET_DEV_INFO", ctrlOp(nrGetDevInfo, false), 0x80207502},
		{"ADD_DEV", ctrlOp(nrAddDev, false), 0xC0207504},
		{"DEL_DEV", ctrlOp(nrDelDev, false), 0xC0207505},
		{"START_DEV", ctrlOp(nrStartDev, false), 0xC0207506},
		{"STOP_DEV", ctrlOp(nrStopDev, false), 0xC0207507},
		{"SET_PARAMS", ctrlOp(nrSetParams, false), 0xC0207508},
		{"GET_PARAMS", ctrlOp(nrGetParams, false), 0x80207509},
		{"START_USER_RECOVERY", ctrlOp(nrStartUserRecovery, false), 0xC0207510},
		{"END_USER_RECOVERY", ctrlOp(nrEndUserRecovery, false), 0xC0207511},
		{"GET_DEV_INFO2", ctrlOp(nrGetDevInfo2, false), 0x80207512},
		{"GET_FEATURES", ctrlOp(nrGetFeatures, false), 0x80207513},
		{"DEL_DEV_ASYNC", ctrlOp(nrDelDevAsync, false), 0x80207514},
		{"IO FETCH_REQ", ioOp(nrFetchReq, false), 0xC0107520},
		{"IO COMMIT_AND_FETCH_REQ", ioOp(nrCommitAndFetch, false), 0xC0107521},
		{"legacy ADD_DEV", ctrlOp(nrAddDev, true), 0x04},
		{"legacy GET_DEV_INFO", ctrlOp(nrGetDevInfo, true), 0x02},
		{"legacy FETCH_REQ", ioOp(nrFetchReq, true), 0x20},
		{"legacy COMMIT_AND_FETCH_REQ", ioOp(nrCommitAndFetch, true), 0x21},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestDescMmapGeometry(t *testing.T) {
	// Every queue's slot is sized for UBLK_MAX_QUEUE_DEPTH, not the real depth.
	if got := descMmapOffset(0, 4096); got != 0 {
		t.Errorf("queue 0 offset = %d, want 0", got)
	}
	if got := descMmapOffset(1, 4096); got != 98304 {
		t.Errorf("queue 1 offset = %d, want 98304", got)
	}
	if got := descMmapOffset(3, 4096); got != 3*98304 {
		t.Errorf("queue 3 offset = %d, want %d", got, 3*98304)
	}
	if got := descMmapOffset(1, 65536); got != 131072 {
		t.Errorf("queue 1 offset on 64K pages = %d, want 131072", got)
	}
	for _, c := range []struct{ depth, want int }{{1, 4096}, {128, 4096}, {170, 4096}, {171, 8192}, {4096, 98304}} {
		if got := descMmapLen(c.depth, 4096); got != c.want {
			t.Errorf("descMmapLen(%d) = %d, want %d", c.depth, got, c.want)
		}
	}
}

func TestFeatureString(t *testing.T) {
	if got, want := FeatureString(0x42), "0x42 [URING_CMD_COMP_IN_TASK CMD_IOCTL_ENCODE]"; got != want {
		t.Errorf("FeatureString(0x42) = %q, want %q", got, want)
	}
	if got := FeatureString(1 << 40); !strings.Contains(got, "bit40") {
		t.Errorf("FeatureString(1<<40) = %q, want an unnamed bit40", got)
	}
	if StateQuiesced.String() != "QUIESCED" || StateLive.String() != "LIVE" || State(9).String() != "State(9)" {
		t.Errorf("State names: %v %v %v", StateQuiesced, StateLive, State(9))
	}
}

func TestCreatorTag(t *testing.T) {
	if got := creatorPID(creatorTag(12345)); got != 12345 {
		t.Errorf("creatorPID(creatorTag(12345)) = %d", got)
	}
	if got := creatorPID(0x42); got != 0 {
		t.Errorf("foreign ublksrv_flags 0x42 gave creator %d, want 0", got)
	}
}
