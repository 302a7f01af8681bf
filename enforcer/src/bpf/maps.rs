//! Every map userspace works with, by its name in the object, taken from
//! the loaded object or from a daemon's pins.

use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
};
use enforcer_common::{
    events::{EVENTS_MAP, LOST_MAP},
    net::{
        DNS_GRANTS_MAP, DnsGrant, NET_RULES_MAP, NetKey, NetPorts, RESOLVERS_MAP, Resolver, UNIX_RULES_MAP, UnixKey,
    },
    policy::{PROTECTED_MAP, PolicyId, Protected, TABLES_MAP, TAG_FILTER_MAP, Tables, TagFilter},
    select::{SELECTED_BLOOM_MAP, SELECTED_MAP, Selected, SelectedBloom},
};

use super::{LoadError, map_err};

/// A table map: an array-of-maps whose slot 0 holds the current table.
pub(super) type TableMaps = ArrayOfMaps<MapData, Array<MapData, Tables>>;

/// Every map userspace works with, taken from the object or its pins.
pub(super) struct Maps {
    pub(super) tables: TableMaps,
    pub(super) tag_filter: Array<MapData, TagFilter>,
    pub(super) lost: PerCpuArray<MapData, u64>,
    pub(super) events: RingBuf<MapData>,
    pub(super) net_rules: LpmTrie<MapData, NetKey, NetPorts>,
    pub(super) unix_rules: BpfHashMap<MapData, UnixKey, u8>,
    pub(super) resolvers: BpfHashMap<MapData, PolicyId, Resolver>,
    pub(super) dns_grants: BpfHashMap<MapData, NetKey, DnsGrant>,
    pub(super) protected: Array<MapData, Protected>,
    pub(super) selected: BpfHashMap<MapData, u64, Selected>,
    pub(super) selected_bloom: Array<MapData, SelectedBloom>,
}

/// The maps userspace works with, by their names in the object.
pub(super) const MAP_NAMES: &[&str] = &[
    TABLES_MAP,
    TAG_FILTER_MAP,
    LOST_MAP,
    EVENTS_MAP,
    NET_RULES_MAP,
    UNIX_RULES_MAP,
    RESOLVERS_MAP,
    DNS_GRANTS_MAP,
    PROTECTED_MAP,
    SELECTED_MAP,
    SELECTED_BLOOM_MAP,
];

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Self::from(|name| ebpf.take_map(name).ok_or(LoadError::MissingMap(name)))
    }

    pub(super) fn from(
        mut take: impl FnMut(&'static str) -> Result<aya::maps::Map, LoadError>,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            tables: ArrayOfMaps::try_from(take(TABLES_MAP)?).map_err(map_err(TABLES_MAP))?,
            tag_filter: Array::try_from(take(TAG_FILTER_MAP)?).map_err(map_err(TAG_FILTER_MAP))?,
            lost: PerCpuArray::try_from(take(LOST_MAP)?).map_err(map_err(LOST_MAP))?,
            events: RingBuf::try_from(take(EVENTS_MAP)?).map_err(map_err(EVENTS_MAP))?,
            net_rules: LpmTrie::try_from(take(NET_RULES_MAP)?).map_err(map_err(NET_RULES_MAP))?,
            unix_rules: BpfHashMap::try_from(take(UNIX_RULES_MAP)?).map_err(map_err(UNIX_RULES_MAP))?,
            resolvers: BpfHashMap::try_from(take(RESOLVERS_MAP)?).map_err(map_err(RESOLVERS_MAP))?,
            dns_grants: BpfHashMap::try_from(take(DNS_GRANTS_MAP)?).map_err(map_err(DNS_GRANTS_MAP))?,
            protected: Array::try_from(take(PROTECTED_MAP)?).map_err(map_err(PROTECTED_MAP))?,
            selected: BpfHashMap::try_from(take(SELECTED_MAP)?).map_err(map_err(SELECTED_MAP))?,
            selected_bloom: Array::try_from(take(SELECTED_BLOOM_MAP)?).map_err(map_err(SELECTED_BLOOM_MAP))?,
        })
    }
}
