//! Wire constants and algorithm identifiers of HIPv2 and its extensions.
//!
//! Parameter type numbers live in [`param_type`]; packet types are the
//! [`PacketType`] enum. Every identifier registry
//! is an *open* enum: the named variants cover the values defined by the
//! RFCs, and `Unknown(v)` carries any other value so that it can be
//! re-emitted unchanged. Equality, ordering and hashing of these enums use
//! the raw wire value, so `DhGroupId::Unknown(3) == DhGroupId::Modp1536`.

/// IP protocol number of HIP (also an IPv6 extension header type).
pub const IPPROTO_HIP: u8 = 139;
/// `IPPROTO_NONE`, the Next Header value of every HIP control packet.
pub const IPPROTO_NONE: u8 = 59;
/// HIP protocol version implemented here.
pub const HIP_VERSION: u8 = 2;
/// Length of the fixed HIP header in bytes.
pub const HEADER_LEN: usize = 40;
/// Largest HIP packet (Header Length 255): (255 + 1) * 8 bytes.
pub const MAX_PACKET_LEN: usize = 2048;
/// Default UDP port for HIP control and ESP under UDP encapsulation.
pub const HIP_UDP_PORT: u16 = 10500;
/// The Controls bit "A": the sender's HI is anonymous.
pub const CONTROL_ANONYMOUS: u16 = 0x0001;
/// ORCHID context identifier of HIP (RFC 7401 §3.2, RFC 7343).
pub const HIP_ORCHID_CONTEXT_ID: [u8; 16] = [
    0xF0, 0xEF, 0xF0, 0x2F, 0xBF, 0xF4, 0x3D, 0x0F, 0xE7, 0x93, 0x0C, 0x3C, 0x6E, 0x61, 0x74, 0xEA,
];

/// Parameter type numbers (RFC 7401, 7402, 8003, 8004, 8046, 5770, 9028).
pub mod param_type {
    /// ESP_INFO (RFC 7402), critical.
    pub const ESP_INFO: u16 = 65;
    /// R1_COUNTER (v2 number; HIPv1 used 128), critical.
    pub const R1_COUNTER: u16 = 129;
    /// LOCATOR_SET (RFC 8046), critical.
    pub const LOCATOR_SET: u16 = 193;
    /// PUZZLE, critical.
    pub const PUZZLE: u16 = 257;
    /// SOLUTION, critical.
    pub const SOLUTION: u16 = 321;
    /// SEQ, critical.
    pub const SEQ: u16 = 385;
    /// ACK, critical.
    pub const ACK: u16 = 449;
    /// DH_GROUP_LIST, critical.
    pub const DH_GROUP_LIST: u16 = 511;
    /// DIFFIE_HELLMAN, critical.
    pub const DIFFIE_HELLMAN: u16 = 513;
    /// HIP_CIPHER, critical.
    pub const HIP_CIPHER: u16 = 579;
    /// NAT_TRAVERSAL_MODE (RFC 5770/9028).
    pub const NAT_TRAVERSAL_MODE: u16 = 608;
    /// TRANSACTION_PACING (RFC 5770/9028).
    pub const TRANSACTION_PACING: u16 = 610;
    /// ENCRYPTED, critical.
    pub const ENCRYPTED: u16 = 641;
    /// HOST_ID, critical.
    pub const HOST_ID: u16 = 705;
    /// HIT_SUITE_LIST, critical.
    pub const HIT_SUITE_LIST: u16 = 715;
    /// CERT (RFC 8002 layout).
    pub const CERT: u16 = 768;
    /// NOTIFICATION.
    pub const NOTIFICATION: u16 = 832;
    /// ECHO_REQUEST_SIGNED, critical.
    pub const ECHO_REQUEST_SIGNED: u16 = 897;
    /// REG_INFO (RFC 8003).
    pub const REG_INFO: u16 = 930;
    /// REG_REQUEST (RFC 8003).
    pub const REG_REQUEST: u16 = 932;
    /// REG_RESPONSE (RFC 8003).
    pub const REG_RESPONSE: u16 = 934;
    /// REG_FAILED (RFC 8003).
    pub const REG_FAILED: u16 = 936;
    /// REG_FROM (RFC 5770/9028).
    pub const REG_FROM: u16 = 950;
    /// ECHO_RESPONSE_SIGNED, critical.
    pub const ECHO_RESPONSE_SIGNED: u16 = 961;
    /// TRANSPORT_FORMAT_LIST, critical.
    pub const TRANSPORT_FORMAT_LIST: u16 = 2049;
    /// ESP_TRANSFORM (RFC 7402), critical; also the ESP transport format id.
    pub const ESP_TRANSFORM: u16 = 4095;
    /// RELAYED_ADDRESS (RFC 9028).
    pub const RELAYED_ADDRESS: u16 = 4650;
    /// MAPPED_ADDRESS (RFC 9028).
    pub const MAPPED_ADDRESS: u16 = 4660;
    /// PEER_PERMISSION (RFC 9028).
    pub const PEER_PERMISSION: u16 = 4680;
    /// CANDIDATE_PRIORITY (RFC 9028).
    pub const CANDIDATE_PRIORITY: u16 = 4700;
    /// NOMINATE (RFC 9028).
    pub const NOMINATE: u16 = 4710;
    /// HIP_MAC, critical.
    pub const HIP_MAC: u16 = 61505;
    /// HIP_MAC_2, critical.
    pub const HIP_MAC_2: u16 = 61569;
    /// HIP_SIGNATURE_2, critical.
    pub const HIP_SIGNATURE_2: u16 = 61633;
    /// HIP_SIGNATURE, critical.
    pub const HIP_SIGNATURE: u16 = 61697;
    /// ECHO_RESPONSE_UNSIGNED, critical (note: lower than the request).
    pub const ECHO_RESPONSE_UNSIGNED: u16 = 63425;
    /// ECHO_REQUEST_UNSIGNED, critical.
    pub const ECHO_REQUEST_UNSIGNED: u16 = 63661;
    /// RELAY_FROM (RFC 5770/9028).
    pub const RELAY_FROM: u16 = 63998;
    /// RELAY_TO (RFC 5770/9028).
    pub const RELAY_TO: u16 = 64002;
    /// FROM (RFC 8004).
    pub const FROM: u16 = 65498;
    /// RVS_HMAC (RFC 8004).
    pub const RVS_HMAC: u16 = 65500;
    /// VIA_RVS (RFC 8004).
    pub const VIA_RVS: u16 = 65502;
    /// RELAY_HMAC (RFC 5770/9028).
    pub const RELAY_HMAC: u16 = 65520;

    /// Every parameter type this codec decodes into a typed value, ascending.
    pub const KNOWN: &[u16] = &[
        ESP_INFO,
        R1_COUNTER,
        LOCATOR_SET,
        PUZZLE,
        SOLUTION,
        SEQ,
        ACK,
        DH_GROUP_LIST,
        DIFFIE_HELLMAN,
        HIP_CIPHER,
        NAT_TRAVERSAL_MODE,
        TRANSACTION_PACING,
        ENCRYPTED,
        HOST_ID,
        HIT_SUITE_LIST,
        CERT,
        NOTIFICATION,
        ECHO_REQUEST_SIGNED,
        REG_INFO,
        REG_REQUEST,
        REG_RESPONSE,
        REG_FAILED,
        REG_FROM,
        ECHO_RESPONSE_SIGNED,
        TRANSPORT_FORMAT_LIST,
        ESP_TRANSFORM,
        RELAYED_ADDRESS,
        MAPPED_ADDRESS,
        PEER_PERMISSION,
        CANDIDATE_PRIORITY,
        NOMINATE,
        HIP_MAC,
        HIP_MAC_2,
        HIP_SIGNATURE_2,
        HIP_SIGNATURE,
        ECHO_RESPONSE_UNSIGNED,
        ECHO_REQUEST_UNSIGNED,
        RELAY_FROM,
        RELAY_TO,
        FROM,
        RVS_HMAC,
        VIA_RVS,
        RELAY_HMAC,
    ];

    /// Whether `ty` is decoded into a typed [`Param`](crate::wire::Param).
    pub fn is_known(ty: u16) -> bool {
        KNOWN.binary_search(&ty).is_ok()
    }

    /// Whether a parameter type is critical (its least significant bit is 1).
    pub const fn is_critical(ty: u16) -> bool {
        ty & 1 == 1
    }
}

/// Defines an "open" identifier enum over an unsigned wire integer.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value without a name in this implementation, kept verbatim.
            Unknown($repr),
        }

        impl $name {
            /// The raw wire value.
            pub const fn value(self) -> $repr {
                match self {
                    $( $name::$variant => $value, )*
                    $name::Unknown(v) => v,
                }
            }

            /// Maps a raw wire value to its named variant, or `Unknown`.
            pub const fn from_value(v: $repr) -> Self {
                match v {
                    $( x if x == $value => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }

            /// Whether the value has a name in this implementation.
            pub const fn is_known(self) -> bool {
                !matches!(Self::from_value(self.value()), $name::Unknown(_))
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                Self::from_value(v)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> $repr {
                v.value()
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.value() == other.value()
            }
        }

        impl Eq for $name {}

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                self.value().cmp(&other.value())
            }
        }

        impl core::hash::Hash for $name {
            fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
                self.value().hash(state)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self {
                    $name::Unknown(v) => write!(f, "{}({})", stringify!($name), v),
                    known => write!(f, "{:?}({})", known, known.value()),
                }
            }
        }
    };
}

open_enum! {
    /// HIP packet types (RFC 7401 §5.3). Values are 7 bits on the wire.
    pub enum PacketType: u8 {
        /// I1, the HIP Initiator packet.
        I1 = 1,
        /// R1, the HIP Responder packet.
        R1 = 2,
        /// I2, the second HIP Initiator packet.
        I2 = 3,
        /// R2, the second HIP Responder packet.
        R2 = 4,
        /// UPDATE.
        Update = 16,
        /// NOTIFY.
        Notify = 17,
        /// CLOSE.
        Close = 18,
        /// CLOSE_ACK.
        CloseAck = 19,
    }
}

open_enum! {
    /// Diffie-Hellman group identifiers (u8, RFC 7401 §5.2.7).
    pub enum DhGroupId: u8 {
        /// Reserved.
        Reserved = 0,
        /// 384-bit group (deprecated HIPv1 group).
        Deprecated1 = 1,
        /// OAKLEY well-known group 1 (deprecated HIPv1 group).
        Deprecated2 = 2,
        /// 1536-bit MODP group (RFC 3526), mandatory.
        Modp1536 = 3,
        /// 3072-bit MODP group.
        Modp3072 = 4,
        /// 6144-bit MODP (deprecated HIPv1 group).
        Deprecated5 = 5,
        /// 8192-bit MODP (deprecated HIPv1 group).
        Deprecated6 = 6,
        /// NIST P-256 (RFC 5903).
        NistP256 = 7,
        /// NIST P-384.
        NistP384 = 8,
        /// NIST P-521.
        NistP521 = 9,
        /// SECP160R1 (low-end use only).
        Secp160r1 = 10,
        /// 2048-bit MODP group.
        Modp2048 = 11,
    }
}

open_enum! {
    /// HIP_CIPHER identifiers (u16).
    pub enum HipCipherId: u16 {
        /// Reserved.
        Reserved = 0,
        /// NULL-ENCRYPT (testing only).
        NullEncrypt = 1,
        /// AES-128-CBC (mandatory).
        Aes128Cbc = 2,
        /// Reserved, unused.
        Reserved3 = 3,
        /// AES-256-CBC.
        Aes256Cbc = 4,
    }
}

open_enum! {
    /// Host Identity algorithm identifiers (u16; HOST_ID and signature alg).
    pub enum HiAlgorithm: u16 {
        /// Reserved.
        Reserved = 0,
        /// DSA (RFC 2536 key format).
        Dsa = 3,
        /// RSA (RFC 3110 key format; RSASSA-PSS signatures).
        Rsa = 5,
        /// ECDSA (curve u16 followed by the public key).
        Ecdsa = 7,
        /// ECDSA_LOW (SECP160R1).
        EcdsaLow = 9,
        /// EdDSA (RFC 9374).
        EdDsa = 13,
    }
}

open_enum! {
    /// HIT Suite identifiers (4 bits; the OGA id of an ORCHIDv2).
    pub enum HitSuiteId: u8 {
        /// Reserved.
        Reserved = 0,
        /// RSA,DSA/SHA-256 (required).
        RsaDsaSha256 = 1,
        /// ECDSA/SHA-384.
        EcdsaSha384 = 2,
        /// ECDSA_LOW/SHA-1.
        EcdsaLowSha1 = 3,
        /// EdDSA/cSHAKE128 (RFC 9374).
        EdDsaCshake128 = 5,
    }
}

open_enum! {
    /// ECDSA / ECDSA_LOW curve labels carried at the start of the HI field.
    pub enum EcCurve: u16 {
        /// Reserved.
        Reserved = 0,
        /// NIST P-256 (ECDSA), or SECP160R1 when the algorithm is ECDSA_LOW.
        NistP256OrSecp160r1 = 1,
        /// NIST P-384 (ECDSA).
        NistP384 = 2,
    }
}

open_enum! {
    /// EdDSA curve labels (RFC 9374).
    pub enum EdDsaCurve: u16 {
        /// Reserved.
        Reserved = 0,
        /// Ed25519.
        Ed25519 = 1,
        /// Ed25519ph.
        Ed25519ph = 2,
        /// Ed448.
        Ed448 = 3,
        /// Ed448ph.
        Ed448ph = 4,
    }
}

open_enum! {
    /// ESP transform suite identifiers (u16, RFC 7402 §5.1.2).
    pub enum EspSuiteId: u16 {
        /// Reserved.
        Reserved = 0,
        /// AES-128-CBC with HMAC-SHA1.
        Aes128CbcHmacSha1 = 1,
        /// Deprecated.
        Deprecated2 = 2,
        /// Deprecated.
        Deprecated3 = 3,
        /// Deprecated.
        Deprecated4 = 4,
        /// Deprecated.
        Deprecated5 = 5,
        /// Deprecated.
        Deprecated6 = 6,
        /// NULL with HMAC-SHA-256.
        NullHmacSha256 = 7,
        /// AES-128-CBC with HMAC-SHA-256 (mandatory).
        Aes128CbcHmacSha256 = 8,
        /// AES-256-CBC with HMAC-SHA-256.
        Aes256CbcHmacSha256 = 9,
        /// AES-CCM with an 8-octet ICV.
        AesCcm8 = 10,
        /// AES-CCM with a 16-octet ICV.
        AesCcm16 = 11,
        /// AES-GCM with an 8-octet ICV.
        AesGcm8 = 12,
        /// AES-GCM with a 16-octet ICV.
        AesGcm16 = 13,
        /// AES-CMAC-96.
        AesCmac96 = 14,
        /// AES-GMAC.
        AesGmac = 15,
    }
}

open_enum! {
    /// NOTIFICATION message types (RFC 7401 §5.2.19, 7402, 8046, 5770, 9028).
    pub enum NotifyType: u16 {
        /// UNSUPPORTED_CRITICAL_PARAMETER_TYPE.
        UnsupportedCriticalParameterType = 1,
        /// INVALID_SYNTAX.
        InvalidSyntax = 7,
        /// NO_DH_PROPOSAL_CHOSEN.
        NoDhProposalChosen = 14,
        /// INVALID_DH_CHOSEN.
        InvalidDhChosen = 15,
        /// NO_HIP_PROPOSAL_CHOSEN.
        NoHipProposalChosen = 16,
        /// INVALID_HIP_CIPHER_CHOSEN.
        InvalidHipCipherChosen = 17,
        /// NO_ESP_PROPOSAL_CHOSEN (RFC 7402).
        NoEspProposalChosen = 18,
        /// INVALID_ESP_TRANSFORM_CHOSEN (RFC 7402).
        InvalidEspTransformChosen = 19,
        /// UNSUPPORTED_HIT_SUITE.
        UnsupportedHitSuite = 20,
        /// AUTHENTICATION_FAILED.
        AuthenticationFailed = 24,
        /// CHECKSUM_FAILED.
        ChecksumFailed = 26,
        /// HIP_MAC_FAILED.
        HipMacFailed = 28,
        /// ENCRYPTION_FAILED.
        EncryptionFailed = 32,
        /// INVALID_HIT.
        InvalidHit = 40,
        /// BLOCKED_BY_POLICY.
        BlockedByPolicy = 42,
        /// RESPONDER_BUSY_PLEASE_RETRY.
        ResponderBusyPleaseRetry = 44,
        /// LOCATOR_TYPE_UNSUPPORTED (RFC 8046).
        LocatorTypeUnsupported = 46,
        /// NO_VALID_NAT_TRAVERSAL_MODE_PARAMETER.
        NoValidNatTraversalModeParameter = 60,
        /// CONNECTIVITY_CHECKS_FAILED.
        ConnectivityChecksFailed = 61,
        /// MESSAGE_NOT_RELAYED.
        MessageNotRelayed = 62,
        /// SERVER_REFLEXIVE_CANDIDATE_ALLOCATION_FAILED (RFC 9028).
        ServerReflexiveCandidateAllocationFailed = 63,
        /// RVS_HMAC_PROHIBITED_WITH_RELAY (RFC 9028).
        RvsHmacProhibitedWithRelay = 64,
        /// I2_ACKNOWLEDGEMENT (status).
        I2Acknowledgement = 16384,
        /// NAT_KEEPALIVE (status, RFC 9028).
        NatKeepalive = 16385,
    }
}

impl NotifyType {
    /// Error types are 0..=16383; status types are 16384..=65535.
    pub const fn is_error(self) -> bool {
        self.value() < 16384
    }
}

open_enum! {
    /// NAT traversal mode identifiers (u16, RFC 5770/9028).
    pub enum NatMode: u16 {
        /// Reserved.
        Reserved = 0,
        /// UDP-ENCAPSULATION.
        UdpEncapsulation = 1,
        /// ICE-STUN-UDP (RFC 5770).
        IceStunUdp = 2,
        /// ICE-HIP-UDP (RFC 9028).
        IceHipUdp = 3,
    }
}

open_enum! {
    /// Registration types (u8, RFC 8003/8004/5770/9028).
    pub enum RegType: u8 {
        /// RENDEZVOUS (RFC 8004).
        Rendezvous = 1,
        /// RELAY_UDP_HIP.
        RelayUdpHip = 2,
        /// RELAY_UDP_ESP.
        RelayUdpEsp = 3,
        /// CANDIDATE_DISCOVERY.
        CandidateDiscovery = 4,
    }
}

open_enum! {
    /// Registration failure types (u8, RFC 8003 §4.3, RFC 9028).
    pub enum RegFailureType: u8 {
        /// Registration requires additional credentials.
        RequiresCredentials = 0,
        /// Registration type unavailable.
        TypeUnavailable = 1,
        /// Insufficient resources.
        InsufficientResources = 2,
        /// Invalid certificate.
        InvalidCertificate = 3,
        /// Bad certificate.
        BadCertificate = 4,
        /// Unsupported certificate.
        UnsupportedCertificate = 5,
        /// Certificate expired.
        CertificateExpired = 6,
        /// Certificate other.
        CertificateOther = 7,
        /// Unknown CA.
        UnknownCa = 8,
        /// Simultaneous rendezvous and relay use is prohibited (RFC 9028).
        RvsAndRelayProhibited = 9,
    }
}

open_enum! {
    /// LOCATOR_SET traffic types (RFC 8046).
    pub enum TrafficType: u8 {
        /// Signalling and data.
        Both = 0,
        /// Signalling (HIP control) only.
        Signalling = 1,
        /// Data only.
        Data = 2,
    }
}

open_enum! {
    /// Candidate kind of a Type-2 (NAT) locator (RFC 5770/9028).
    pub enum CandidateKind: u8 {
        /// Host candidate.
        Host = 0,
        /// Server-reflexive candidate.
        ServerReflexive = 1,
        /// Peer-reflexive candidate.
        PeerReflexive = 2,
        /// Relayed candidate.
        Relayed = 3,
    }
}

/// DI-Type values of HOST_ID.
pub mod di_type {
    /// No domain identifier.
    pub const NONE: u8 = 0;
    /// FQDN in RFC 1035 wire format.
    pub const FQDN: u8 = 1;
    /// Network Access Identifier.
    pub const NAI: u8 = 2;
}

/// Locator type numbers of LOCATOR_SET entries.
pub mod locator_type {
    /// IPv6 address or IPv4-mapped IPv6 address (16 bytes).
    pub const ADDRESS: u8 = 0;
    /// ESP SPI followed by an address (20 bytes).
    pub const ESP_SPI: u8 = 1;
    /// NAT/ICE transport locator (28 bytes, RFC 5770/9028).
    pub const NAT: u8 = 2;
}
