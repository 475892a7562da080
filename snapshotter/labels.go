package snapshotter

// Labels of ACI's pkg/label that this snapshotter reads or sets.
const (
	LabelTargetRef        = "containerd.io/snapshot.ref"
	LabelImageRef         = "containerd.io/snapshot/image-ref"
	LabelCRIImageRef      = "containerd.io/snapshot/cri.image-ref"
	LabelBlobDigest       = "containerd.io/snapshot/overlaybd/blob-digest"
	LabelBlobSize         = "containerd.io/snapshot/overlaybd/blob-size"
	LabelBlobFsType       = "containerd.io/snapshot/overlaybd/blob-fs-type"
	LabelVersion          = "containerd.io/snapshot/overlaybd/version"
	LabelVsize            = "containerd.io/snapshot/overlaybd/vsize"
	LabelWritable         = "containerd.io/snapshot/overlaybd.writable"
	LabelRemote           = "containerd.io/snapshot/remote"
	LabelLocalCommitPath  = "containerd.io/snapshot/overlaybd.localcommitpath"
	remoteLabelValue      = "remote snapshot"
	defaultVsizeGB        = 64
	commitFileName        = "overlaybd.commit"
	sealedFileName        = "overlaybd.sealed"
	overlaybdConfigName   = "config.v1.json"
	resultFileName        = "init-debug.log"
	writableDataFileName  = "writable_data"
	writableIndexFileName = "writable_index"
)

// imageRef returns the image reference of a remote layer's labels.
func imageRef(labels map[string]string) string {
	if r := labels[LabelImageRef]; r != "" {
		return r
	}
	return labels[LabelCRIImageRef]
}

// isRemoteLayer: blob digest, size and image reference make a lazily served layer.
func isRemoteLayer(labels map[string]string) bool {
	return labels[LabelBlobDigest] != "" && labels[LabelBlobSize] != "" && imageRef(labels) != ""
}
