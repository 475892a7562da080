package ublk

// Kernel ABI of the ublk driver, written from include/uapi/linux/ublk_cmd.h
// (6.12 and mainline). Layouts are checked at compile time below and against
// the C offsets in abi_test.go.

import (
	"fmt"
	"strings"
	"unsafe"
)

// ioctl-style encoding of UBLK_U_CMD_* / UBLK_U_IO_*: dir<<30 | size<<16 | 'u'<<8 | nr.
func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | uint32('u')<<8 | nr }

const (
	iocWrite = 1
	iocRead  = 2

	ctrlCmdSize = 32 // sizeof(struct ublksrv_ctrl_cmd)
	ioCmdSize   = 16 // sizeof(struct ublksrv_io_cmd)
)

// Control command numbers (_IOC_NR). The legacy opcodes (6.0–6.3 kernels) are
// these bare numbers; the ioctl-encoded ones wrap them with ioc.
const (
	nrGetQueueAffinity  = 0x01
	nrGetDevInfo        = 0x02
	nrAddDev            = 0x04
	nrDelDev            = 0x05
	nrStartDev          = 0x06
	nrStopDev           = 0x07
	nrSetParams         = 0x08
	nrGetParams         = 0x09
	nrStartUserRecovery = 0x10
	nrEndUserRecovery   = 0x11
	nrGetDevInfo2       = 0x12
	nrGetFeatures       = 0x13
	nrDelDevAsync       = 0x14

	nrFetchReq       = 0x20
	nrCommitAndFetch = 0x21
)

// ctrlOp returns the opcode for a control command: GET_* are _IOR, the rest _IOWR
// (the kernel compares some, e.g. GET_FEATURES, exactly).
func ctrlOp(nr uint32, legacy bool) uint32 {
	if legacy {
		return nr
	}
	switch nr {
	case nrGetQueueAffinity, nrGetDevInfo, nrGetParams, nrGetDevInfo2, nrGetFeatures, nrDelDevAsync:
		return ioc(iocRead, nr, ctrlCmdSize)
	}
	return ioc(iocRead|iocWrite, nr, ctrlCmdSize)
}

// ioOp returns the opcode of a data-plane command (FETCH_REQ, COMMIT_AND_FETCH_REQ).
func ioOp(nr uint32, legacy bool) uint32 {
	if legacy {
		return nr
	}
	return ioc(iocRead|iocWrite, nr, ioCmdSize)
}

// Feature flags (ublksrv_ctrl_dev_info.flags, GET_FEATURES).
const (
	FeatureSupportZeroCopy     uint64 = 1 << 0
	FeatureURingCmdCompInTask  uint64 = 1 << 1
	FeatureNeedGetData         uint64 = 1 << 2
	FeatureUserRecovery        uint64 = 1 << 3
	FeatureUserRecoveryReissue uint64 = 1 << 4
	FeatureUnprivilegedDev     uint64 = 1 << 5
	FeatureCmdIoctlEncode      uint64 = 1 << 6
	FeatureUserCopy            uint64 = 1 << 7
	FeatureZoned               uint64 = 1 << 8
	FeatureUserRecoveryFailIO  uint64 = 1 << 9
	FeatureAutoBufReg          uint64 = 1 << 11
	FeatureBufRegOffDaemon     uint64 = 1 << 14
)

// legacyFeatures is assumed when GET_FEATURES is missing (kernels before 6.5):
// everything 6.1 already had.
const legacyFeatures = FeatureURingCmdCompInTask | FeatureNeedGetData | FeatureUserRecovery | FeatureUserRecoveryReissue

var featureNames = [...]string{"SUPPORT_ZERO_COPY", "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA", "USER_RECOVERY",
	"USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV", "CMD_IOCTL_ENCODE", "USER_COPY", "ZONED", "USER_RECOVERY_FAIL_IO",
	"UPDATE_SIZE", "AUTO_BUF_REG", "QUIESCE", "PER_IO_DAEMON", "BUF_REG_OFF_DAEMON", "BATCH_IO", "INTEGRITY",
	"SAFE_STOP_DEV", "NO_AUTO_PART_SCAN", "SHMEM_ZC"}

// FeatureString names the UBLK_F_* bits of f, e.g. "0x42 [URING_CMD_COMP_IN_TASK CMD_IOCTL_ENCODE]".
func FeatureString(f uint64) string {
	var names []string
	for i := 0; i < 64; i++ {
		if f&(1<<i) == 0 {
			continue
		}
		if i < len(featureNames) {
			names = append(names, featureNames[i])
		} else {
			names = append(names, fmt.Sprintf("bit%d", i))
		}
	}
	return fmt.Sprintf("%#x [%s]", f, strings.Join(names, " "))
}

// Device states (ublksrv_ctrl_dev_info.state).
type State uint16

const (
	StateDead     State = 0
	StateLive     State = 1
	StateQuiesced State = 2
	StateFailIO   State = 3
)

func (s State) String() string {
	switch s {
	case StateDead:
		return "DEAD"
	case StateLive:
		return "LIVE"
	case StateQuiesced:
		return "QUIESCED"
	case StateFailIO:
		return "FAIL_IO"
	}
	return fmt.Sprintf("State(%d)", uint16(s))
}

// I/O descriptor operations and flags (ublksrv_io_desc.op_flags).
const (
	opRead        = 0
	opWrite       = 1
	opFlush       = 2
	opDiscard     = 3
	opWriteSame   = 4
	opWriteZeroes = 5

	ioFlagFUA = 1 << 13
	// ioFlagNeedRegBuf: with AUTO_BUF_REG and its fallback, registering the
	// request's buffer failed; its data moves only through user copy.
	ioFlagNeedRegBuf = 1 << 17
)

// Parameter types and basic attributes (struct ublk_params).
const (
	paramTypeBasic   = 1 << 0
	paramTypeDiscard = 1 << 1

	attrReadOnly      = 1 << 0
	attrVolatileCache = 1 << 2
	attrFUA           = 1 << 3
)

const (
	maxDepth   = 4096 // UBLK_MAX_QUEUE_DEPTH: sizes each queue's slot in the descriptor mmap
	maxQueues  = 4096
	descSize   = 24
	noQueue    = 0xffff
	autoDevID  = 0xffffffff
	cmdBufBase = 0 // UBLKSRV_CMD_BUF_OFFSET
)

// ctrlCmd is struct ublksrv_ctrl_cmd, placed at SQE offset 48 of a 128-byte SQE.
type ctrlCmd struct {
	DevID      uint32
	QueueID    uint16
	Len        uint16
	Addr       uint64
	Data       uint64
	DevPathLen uint16
	Pad        uint16
	Reserved   uint32
}

// devInfo is struct ublksrv_ctrl_dev_info.
type devInfo struct {
	NrHwQueues    uint16
	QueueDepth    uint16
	State         uint16
	Pad0          uint16
	MaxIOBufBytes uint32
	DevID         uint32
	ServerPID     int32
	Pad1          uint32
	Flags         uint64
	ServerFlags   uint64
	OwnerUID      uint32
	OwnerGID      uint32
	Reserved1     uint64
	Reserved2     uint64
}

type paramBasic struct {
	Attrs           uint32
	LogicalBSShift  uint8
	PhysicalBSShift uint8
	IOOptShift      uint8
	IOMinShift      uint8
	MaxSectors      uint32
	ChunkSectors    uint32
	DevSectors      uint64
	VirtBoundary    uint64
}

type paramDiscard struct {
	Alignment             uint32
	Granularity           uint32
	MaxDiscardSectors     uint32
	MaxWriteZeroesSectors uint32
	MaxDiscardSegments    uint16
	Reserved0             uint16
}

type paramDevt struct{ CharMajor, CharMinor, DiskMajor, DiskMinor uint32 }

type paramZoned struct {
	MaxOpenZones         uint32
	MaxActiveZones       uint32
	MaxZoneAppendSectors uint32
	Reserved             [20]byte
}

// params is struct ublk_params as of 6.12 (112 bytes). Newer kernels append
// more types; params.Len tells them how much we know, and they accept it.
type params struct {
	Len     uint32
	Types   uint32
	Basic   paramBasic
	Discard paramDiscard
	Devt    paramDevt
	Zoned   paramZoned
}

// ioDesc is struct ublksrv_io_desc, written by the kernel into the read-only
// per-queue descriptor mmap, indexed by tag.
type ioDesc struct {
	OpFlags     uint32
	NrSectors   uint32
	StartSector uint64
	Addr        uint64
}

func (d ioDesc) op() uint32 { return d.OpFlags & 0xff }

// User copy (UBLK_F_USER_COPY): the data of request (qid, tag) is read and
// written with pread/pwrite on /dev/ublkcN at ioBufOffset + byte offset.
const (
	ioBufOffsetBase = 0x80000000
	ioBufTagShift   = 25
	ioBufQIDShift   = ioBufTagShift + 16
)

func ioBufOffset(qid int, tag uint16) int64 {
	return ioBufOffsetBase + int64(qid)<<ioBufQIDShift + int64(tag)<<ioBufTagShift
}

// autoBufFallback (struct ublk_auto_buf_reg.flags): when the kernel cannot
// register a request's buffer it delivers the request with ioFlagNeedRegBuf
// instead of failing it.
const autoBufFallback = 1 << 0

// ioCmd is struct ublksrv_io_cmd, placed at SQE offset 48.
type ioCmd struct {
	QID    uint16
	Tag    uint16
	Result int32
	Addr   uint64
}

// Compile-time size checks (a negative array length fails the build).
var (
	_ [unsafe.Sizeof(ctrlCmd{}) - ctrlCmdSize]byte
	_ [ctrlCmdSize - unsafe.Sizeof(ctrlCmd{})]byte
	_ [unsafe.Sizeof(devInfo{}) - 64]byte
	_ [64 - unsafe.Sizeof(devInfo{})]byte
	_ [unsafe.Sizeof(params{}) - 112]byte
	_ [112 - unsafe.Sizeof(params{})]byte
	_ [unsafe.Sizeof(ioDesc{}) - descSize]byte
	_ [descSize - unsafe.Sizeof(ioDesc{})]byte
	_ [unsafe.Sizeof(ioCmd{}) - ioCmdSize]byte
	_ [ioCmdSize - unsafe.Sizeof(ioCmd{})]byte
)

// descMmapOffset is where queue qid's descriptor array lives in /dev/ublkcN:
// every queue gets a slot sized for the maximum depth, whatever the real depth.
func descMmapOffset(qid, pageSize int) int64 {
	return int64(cmdBufBase + qid*roundUp(maxDepth*descSize, pageSize))
}

// descMmapLen is the only length the kernel accepts for a queue's descriptor mmap.
func descMmapLen(depth, pageSize int) int {
	return roundUp(depth*descSize, pageSize)
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }
