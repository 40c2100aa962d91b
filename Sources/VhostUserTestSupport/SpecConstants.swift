/// Numbers as the specifications define them, for tests to write expected values down from the
/// documents instead of reading them from the code under test (an expected value taken from the
/// implementation makes a check that cannot fail). Names are the specifications' own.
public enum VirtioSpec {
    // virtio 1.4 §6 "Reserved Feature Bits" (the transport's bits).
    public static let VIRTIO_F_INDIRECT_DESC: UInt64 = 1 << 28
    public static let VIRTIO_F_EVENT_IDX: UInt64 = 1 << 29
    public static let VIRTIO_F_VERSION_1: UInt64 = 1 << 32
    public static let VIRTIO_F_ACCESS_PLATFORM: UInt64 = 1 << 33

    // virtio 1.4 §2.7.6 and §2.7.8: the ring flags.
    public static let VIRTQ_AVAIL_F_NO_INTERRUPT: UInt16 = 1
    public static let VIRTQ_USED_F_NO_NOTIFY: UInt16 = 1
}

/// vhost-user.rst's numbers (QEMU's docs/interop/vhost-user.rst), under its own names.
public enum VhostUserSpec {
    // vhost-user.rst, "Feature negotiation": the bit vhost-user takes from the device's feature space.
    public static let VHOST_USER_F_PROTOCOL_FEATURES: UInt64 = 1 << 30

    // vhost-user.rst, "Protocol features".
    public static let VHOST_USER_PROTOCOL_F_MQ: UInt64 = 1 << 0
    public static let VHOST_USER_PROTOCOL_F_REPLY_ACK: UInt64 = 1 << 3
    public static let VHOST_USER_PROTOCOL_F_BACKEND_REQ: UInt64 = 1 << 5
    public static let VHOST_USER_PROTOCOL_F_CONFIG: UInt64 = 1 << 9
    public static let VHOST_USER_PROTOCOL_F_RESET_DEVICE: UInt64 = 1 << 13
    public static let VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS: UInt64 = 1 << 15
    public static let VHOST_USER_PROTOCOL_F_STATUS: UInt64 = 1 << 16
}
