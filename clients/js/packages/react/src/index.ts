export { useChangecast, type Handlers, type UseChangecastOptions, type UseChangecastResult } from './useChangecast.js';
export { useLiveSnapshot, type UseLiveSnapshotOptions, type UseLiveSnapshotResult } from './useLiveSnapshot.js';
export { LiveList, type RowId } from './liveList.js';
